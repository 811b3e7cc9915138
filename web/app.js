// The planner dashboard. Reads the REST API with the session cookie
// (POST /v1/session signs in), writes with the session's CSRF token, and
// follows migrations live over server-sent events (GET /v1/events).
// Drawing: d3-geo and topojson-client for the map, uPlot for the charts.

const HOUR = 3600e3;
const ACTIVE = ["pending", "scheduled", "claimed", "transferring", "cutover", "recovering"];
const state = {
  session: null, overview: null, plan: null, migrations: new Map(), ganttPlan: null, appliedCursor: null, charts: {},
  signalsShown: null, savingsAt: 0,
};

// ---- the API -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf_token;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

/// Every page of a list from `cursor` on (the start when null), and the
/// cursor of its last page (to read only what is new next time).
async function pages(path, cursor = null) {
  const items = [];
  let last = cursor;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api("GET", `${path}${sep}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    items.push(...page.items);
    if (!page.next_cursor) return { items, last };
    last = cursor = page.next_cursor;
  }
}

const all = async (path) => (await pages(path)).items;

const $ = (id) => document.getElementById(id);
const canWrite = () => state.session && ["planner", "admin"].includes(state.session.role);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const fmt = (x, digits = 2) => x === null || x === undefined || Number.isNaN(x) ? "–"
  : Number(x).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
/// Money and kg: cents and grams matter while a fleet is small.
const amount = (x) => fmt(x, Math.abs(x) < 1 ? 4 : 2);
const bytes = (b) => {
  if (!b) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log2(b) / 10));
  return `${(b / 2 ** (10 * i)).toFixed(i ? 1 : 0)} ${units[i]}`;
};
const seconds = (s) => s === null || s === undefined ? "–" : s < 90 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
const time = (t) => new Date(t).toISOString().slice(0, 16).replace("T", " ") + " UTC";

function notice(message) {
  $("notice").textContent = message || "";
}

function fail(error) {
  console.warn(error);
  notice(error.message);
}

// ---- session -------------------------------------------------------------

async function start() {
  // 204 (no body): not signed in.
  state.session = await api("GET", "/v1/session").catch(fail);
  if (state.session === null) {
    $("signin").hidden = false;
    return;
  }
  if (!state.session) return;
  document.body.classList.toggle("viewer", !canWrite());
  // Viewers get no write controls at all (the server refuses their writes too).
  if (!canWrite()) document.querySelectorAll(".write").forEach((node) => node.remove());
  $("who").replaceChildren(
    el("span", { class: "badge", id: "role" }, state.session.role),
    el("button", { id: "sign-out", onclick: signOut }, "Sign out"),
  );
  $("dashboard").hidden = false;
  await Promise.all([drawMapBase(), refresh()]).catch(fail);
  wireActions();
  follow();
  setInterval(() => refresh().catch(fail), 10_000);
  setInterval(drawNight, 60_000);
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("POST", "/v1/session", { token: $("token").value.trim() });
    location.reload();
  } catch (error) {
    $("signin-error").textContent = error.status === 401 ? "That token is not valid." : error.message;
  }
});

async function signOut() {
  await api("DELETE", "/v1/session").catch(() => {});
  location.reload();
}

// ---- refresh -------------------------------------------------------------

async function refresh() {
  const [overview, proposed, approved, applied] = await Promise.all([
    api("GET", "/v1/overview"),
    api("GET", "/v1/plans?status=proposed&limit=1000"),
    api("GET", "/v1/plans?status=approved&limit=1000"),
    // Applied plans pile up (one an hour): read only the pages not seen yet.
    pages("/v1/plans?status=applied", state.appliedCursor),
  ]);
  state.appliedCursor = applied.last;
  state.overview = overview;
  const waiting = [...approved.items, ...proposed.items].sort((a, b) => b.id - a.id)[0];
  state.plan = waiting ? await api("GET", `/v1/plans/${waiting.id}`) : null;
  const lastApplied = applied.items.sort((a, b) => b.id - a.id)[0];
  if (lastApplied && lastApplied.id !== state.ganttPlan) {
    state.ganttPlan = lastApplied.id;
    const [migrations, schedule] = await Promise.all([
      all(`/v1/migrations?plan=${lastApplied.id}`), api("GET", `/v1/plans/${lastApplied.id}/schedule`)]);
    const predicted = new Map(schedule.migrations.map((s) => [s.vm, s.predicted_duration_s]));
    state.migrations = new Map(migrations.map((m) => [m.id, {
      ...m, predicted_s: predicted.get(m.vm), finished_at: m.state === "done" ? Date.parse(m.updated_at) : undefined }]));
  }
  state.flows = await activeFlows();
  drawSites();
  fillSiteSelects();
  drawSilent();
  drawFeedHealth();
  drawPlan();
  drawGantt();
  // Hourly figures are fetched again only when they can have changed (a
  // redraw would also drop the chart a reader is hovering over).
  await Promise.all([
    signalsShown($("signal-site").value) === state.signalsShown ? null : drawSignals(),
    Date.now() - state.savingsAt < 60_000 ? null : drawSavings(),
    drawFeeds(),
  ]);
}

async function activeFlows() {
  const lists = await Promise.all(["claimed", "transferring", "cutover"].map((s) => all(`/v1/migrations?state=${s}`)));
  const flows = new Map();
  for (const m of lists.flat()) {
    const key = `${m.from}→${m.to}`;
    flows.set(key, { from: m.from, to: m.to, count: (flows.get(key)?.count || 0) + 1 });
  }
  return [...flows.values()];
}

// ---- map -----------------------------------------------------------------

const W = 960, H = 470;
let projection, geoPath;

async function drawMapBase() {
  const topo = await fetch("/web/world-countries-110m.topo.json").then((r) => r.json());
  const countries = topojson.feature(topo, topo.objects.countries);
  projection = d3.geoEqualEarth().fitExtent([[8, 8], [W - 8, H - 8]], { type: "Sphere" });
  geoPath = d3.geoPath(projection);
  const map = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "world map of the sites" },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 5, markerHeight: 5, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#c2410c" }))),
    svg("path", { d: geoPath({ type: "Sphere" }), fill: "#dbeafe" }),
    svg("path", { class: "graticule", d: geoPath(d3.geoGraticule10()) }),
    svg("g", { id: "countries" }, countries.features.map((f) =>
      svg("path", { class: "country", d: geoPath(f), "data-name": f.properties.name }, svg("title", {}, f.properties.name)))),
    svg("path", { id: "night", class: "night" }),
    svg("g", { id: "flows" }),
    svg("g", { id: "sites" }),
  );
  $("map-box").replaceChildren(map);
  drawNight();
}

/// Where the sun is overhead at `date`: [longitude, latitude] in degrees
/// (the low-precision solar coordinates of the Astronomical Almanac).
function subsolarPoint(date) {
  const rad = Math.PI / 180;
  const d = (date.getTime() - Date.UTC(2000, 0, 1, 12)) / 864e5;
  const g = (357.529 + 0.98560028 * d) * rad;
  const q = 280.459 + 0.98564736 * d;
  const lambda = (q + 1.915 * Math.sin(g) + 0.02 * Math.sin(2 * g)) * rad;
  const epsilon = (23.439 - 0.00000036 * d) * rad;
  const declination = Math.asin(Math.sin(epsilon) * Math.sin(lambda));
  const rightAscension = Math.atan2(Math.cos(epsilon) * Math.sin(lambda), Math.cos(lambda)) / rad;
  const gmst = (18.697374558 + 24.06570982441908 * d) * 15;
  const lon = ((rightAscension - gmst) % 360 + 540) % 360 - 180;
  return [lon, declination / rad];
}

function drawNight() {
  if (!geoPath) return;
  const now = new Date();
  const [lon, lat] = subsolarPoint(now);
  const night = d3.geoCircle().center([lon + 180, -lat]).radius(90)();
  $("night").setAttribute("d", geoPath(night));
  $("map-time").textContent = `night side at ${time(now)}; sun overhead at ${lat.toFixed(1)}°, ${lon.toFixed(1)}°`;
}

/// Low carbon green, high red (g/kWh).
function carbonColour(g) {
  if (g === null || g === undefined) return "#9ca3af";
  const stops = [[0, [22, 163, 74]], [250, [234, 179, 8]], [500, [234, 88, 12]], [800, [127, 29, 29]]];
  let i = 0;
  while (i < stops.length - 2 && g > stops[i + 1][0]) i++;
  const [[a, ca], [b, cb]] = [stops[i], stops[i + 1]];
  const t = Math.max(0, Math.min(1, (g - a) / (b - a)));
  return `rgb(${ca.map((c, k) => Math.round(c + t * (cb[k] - c))).join(",")})`;
}

function drawSites() {
  if (!projection) return;
  const sites = state.overview.sites;
  const most = Math.max(1, ...sites.map((s) => s.vms));
  const radius = (vms) => 4 + 14 * Math.sqrt(vms / most);
  const at = new Map(sites.map((s) => [s.name, [s.longitude, s.latitude]]));
  $("sites").replaceChildren(...sites.map((s) => {
    const [x, y] = projection([s.longitude, s.latitude]);
    const carbon = s.carbon?.value;
    const tip = `${s.name} (${s.region}, ${s.state})\n${s.vms} VMs, ${s.vcpus_used}/${s.vcpus} vCPUs\n` +
      `carbon ${carbon === undefined ? "unknown" : `${fmt(carbon, 0)} gCO2e/kWh`}\n` +
      `price ${s.price ? `${fmt(s.price.value)} ${s.price.unit}` : "unknown"}\n` +
      `migrations in ${s.migrations_in}, out ${s.migrations_out}${s.stale ? "\nfeed stale" : ""}`;
    return svg("g", { class: "site-marker", "data-site": s.name },
      svg("circle", { class: "site", cx: x, cy: y, r: radius(s.vms), fill: carbonColour(carbon),
        "stroke-dasharray": s.stale ? "2 2" : null }, svg("title", {}, tip)),
      svg("text", { class: "site-label", x: x + radius(s.vms) + 2, y: y + 3 }, s.name));
  }));
  $("flows").replaceChildren(...(state.flows || []).filter((f) => at.has(f.from) && at.has(f.to)).map((f) => {
    const line = { type: "LineString", coordinates: [at.get(f.from), at.get(f.to)] };
    return svg("path", { class: "flow", d: geoPath(line), "stroke-width": 1.5 + Math.min(6, f.count),
      "marker-end": "url(#arrow)" }, svg("title", {}, `${f.count} migration${f.count > 1 ? "s" : ""} ${f.from} → ${f.to}`));
  }));
  const legend = [0, 250, 500, 800].map((g) =>
    el("span", {}, svgSwatch(carbonColour(g)), ` ${g} gCO2e/kWh`));
  $("map-legend").replaceChildren(...legend, el("span", {}, "marker size: VMs hosted (largest ", String(most), ")"),
    el("span", {}, "dashed: stale feed"), el("span", {}, "arrows: migrations under way"), el("span", {}, "shade: night"));
}

function svgSwatch(colour) {
  return svg("svg", { width: 12, height: 12 }, svg("circle", { cx: 6, cy: 6, r: 5, fill: colour, stroke: "#111827" }));
}

// ---- signals -------------------------------------------------------------

function fillSiteSelects() {
  for (const select of [$("signal-site"), $("evacuate-site"), $("fail-site")].filter(Boolean)) {
    const names = state.overview.sites.map((s) => s.name);
    if ([...select.options].map((o) => o.value).join() === names.join()) continue;
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(chosen)) select.value = chosen;
  }
}

/// What the signal charts show: a site's series as of this hour.
const signalsShown = (site) => `${site}|${Math.floor(Date.now() / HOUR)}`;

async function drawSignals() {
  const site = state.overview.sites.find((s) => s.name === $("signal-site").value) || state.overview.sites[0];
  if (!site) return;
  state.signalsShown = signalsShown(site.name);
  const now = Date.now();
  const from = new Date(now - 48 * HOUR).toISOString(), to = new Date(now + 24 * HOUR).toISOString();
  const [carbon, price] = await Promise.all(["carbon", "price"].map((signal) =>
    api("GET", `/v1/sites/${site.id}/signals?signal=${signal}&from=${from}&to=${to}&resolution=hourly`)
      .then((series) => series.points)));
  const describe = (name, points) => {
    const bases = [...new Set(points.map((p) => p.basis))].join(", ");
    const sources = [...new Set(points.map((p) => p.source))].join(", ");
    return points.length ? `${name}: ${bases} (source ${sources})` : `${name}: no data`;
  };
  const synthetic = [...carbon, ...price].some((p) => p.basis === "synthetic");
  $("signal-basis").replaceChildren(`${site.name}, ${site.region}. `, describe("carbon", carbon), "; ",
    describe("price", price), synthetic ? el("span", { class: "badge warn" }, " synthetic demo data, not a measurement") : "");
  chart("chart-carbon", `Carbon intensity, ${site.name}`, "gCO2e/kWh", carbon, now);
  chart("chart-price", `Electricity price, ${site.name}`, price[0]?.unit || "per MWh", price, now);
}

/// An actual-vs-forecast line chart of hourly points, with a line at now.
function chart(id, title, unit, points, now) {
  const xs = points.map((p) => Date.parse(p.timestamp) / 1000);
  const actual = points.map((p) => p.kind === "actual" ? p.value : null);
  const forecast = points.map((p) => p.kind === "forecast" ? p.value : null);
  const box = $(id);
  box.dataset.points = String(points.length);
  const width = Math.max(300, box.clientWidth || 560);
  const opts = {
    title, width, height: 240,
    scales: { x: { time: true } },
    axes: [{ label: "UTC" }, { label: unit, size: 60 }],
    series: [
      { value: (u, v) => v === null ? "–" : time(v * 1000) },
      { label: "actual", stroke: "#2563eb", width: 2, value: (u, v) => v === null ? "–" : fmt(v, 1) },
      { label: "forecast", stroke: "#9333ea", width: 2, dash: [6, 4], value: (u, v) => v === null ? "–" : fmt(v, 1) },
    ],
    hooks: { draw: [(u) => markNow(u, now / 1000)] },
  };
  state.charts[id]?.destroy();
  state.charts[id] = new uPlot(opts, [xs, actual, forecast], box);
}

function markNow(u, x) {
  const px = u.valToPos(x, "x", true);
  if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) return;
  const ctx = u.ctx;
  ctx.save();
  ctx.strokeStyle = "#dc2626";
  ctx.setLineDash([4, 4]);
  ctx.beginPath();
  ctx.moveTo(px, u.bbox.top);
  ctx.lineTo(px, u.bbox.top + u.bbox.height);
  ctx.stroke();
  ctx.fillStyle = "#dc2626";
  ctx.fillText("now", px + 4, u.bbox.top + 12);
  ctx.restore();
}

function drawFeedHealth() {
  $("feed-health").tBodies[0].replaceChildren(...state.overview.sites.map((s) => {
    const newest = [s.carbon, s.price].filter((p) => p && p.kind === "actual").map((p) => p.timestamp).sort().pop();
    return el("tr", { class: s.stale ? "stale" : "" },
      el("td", {}, s.name),
      el("td", { class: "num" }, s.carbon ? `${fmt(s.carbon.value, 0)} ${s.carbon.unit}` : "–"),
      el("td", { class: "num" }, s.price ? `${fmt(s.price.value)} ${s.price.unit}` : "–"),
      el("td", {}, newest ? time(newest) : "none"),
      el("td", {}, s.stale ? el("span", { class: "badge bad" }, "stale: no actual in 2 h") : el("span", { class: "badge ok" }, "fresh")));
  }));
}

async function drawFeeds() {
  // Feed settings are the admin's; others see each site's freshness above.
  if (state.session.role !== "admin") return;
  const feeds = await all("/v1/feeds");
  $("feeds").hidden = feeds.length === 0;
  $("feeds").tBodies[0].replaceChildren(...feeds.map((f) => el("tr", { class: f.health.stale || f.health.last_error ? "stale" : "" },
    el("td", {}, `${f.provider} #${f.id}${f.enabled ? "" : " (off)"}`), el("td", {}, f.site), el("td", {}, f.signal),
    el("td", {}, f.health.last_success_at ? time(f.health.last_success_at) : "never"),
    el("td", {}, f.health.last_error ? `${time(f.health.last_error_at)}: ${f.health.last_error}` : "–"),
    el("td", {}, f.health.stale ? el("span", { class: "badge bad" }, "stale") : el("span", { class: "badge ok" }, "ok")))));
}

// ---- plan ----------------------------------------------------------------

function drawPlan() {
  const plan = state.plan;
  if (canWrite()) {
    $("plan-approve").hidden = !plan || plan.status !== "proposed";
    $("plan-apply").hidden = !plan || plan.status !== "approved";
  }
  const placement = new Map(state.overview.sites.map((s) => [s.name, { now: s.vms, then: s.vms }]));
  if (!plan) {
    $("plan-summary").replaceChildren(el("p", { class: "hint" },
      "No plan is waiting for approval. ", canWrite() ? "Make one to see what moving would save." : ""));
    $("plan-costs").replaceChildren();
    $("moves").tBodies[0].replaceChildren();
  } else {
    for (const m of plan.moves) {
      if (placement.has(m.from)) placement.get(m.from).then -= 1;
      if (placement.has(m.to)) placement.get(m.to).then += 1;
    }
    const c = plan.currency;
    const saved = plan.baseline.objective - plan.objective.objective;
    $("plan-summary").replaceChildren(el("p", {},
      el("strong", { id: "plan-status", "data-status": plan.status }, `Plan ${plan.id}: ${plan.status}`),
      ` — made ${time(plan.created_at)}, ${plan.request.mode} mode over ${plan.request.horizon_h} h from ${time(plan.horizon_start)}; `,
      `${plan.moves.length} moves; solver ${plan.solver.status} in ${fmt(plan.solver.solve_s)} s (gap ${fmt(100 * plan.solver.gap)}%)`,
      plan.signals.some((s) => s.synthetic) ? el("span", { class: "badge warn" }, " synthetic signals") : ""));
    const row = (name, key, digits = 2) => el("tr", {}, el("td", {}, name),
      el("td", { class: "num" }, fmt(plan.baseline[key], digits)), el("td", { class: "num" }, fmt(plan.objective[key], digits)),
      el("td", { class: "num" }, fmt(plan.baseline[key] - plan.objective[key], digits)));
    $("plan-costs").replaceChildren(el("table", { id: "objective" },
      el("thead", {}, el("tr", {}, el("th", {}, `over the horizon (${c})`), el("th", { class: "num" }, "stay put"),
        el("th", { class: "num" }, "plan"), el("th", { class: "num" }, "saved"))),
      el("tbody", {}, row(`energy cost ${c}`, "energy_cost"), row("emissions kg CO2e", "emissions_kg", 1),
        row(`migration cost ${c}`, "migration_cost"), row(`churn charge ${c}`, "churn_charge"),
        row(`objective ${c}`, "objective"))),
      el("p", { class: saved > 0 ? "" : "hint" }, `The plan's objective is ${fmt(saved)} ${c} below the no-move baseline.`));
    const shown = [...plan.moves].sort((a, b) => b.saving_cost - a.saving_cost).slice(0, 300);
    $("moves").tBodies[0].replaceChildren(...shown.map((m) => el("tr", {},
      el("td", {}, m.vm), el("td", {}, m.from), el("td", {}, m.to),
      el("td", { class: "num" }, `${fmt(m.saving_cost)} ${c}`), el("td", { class: "num" }, fmt(m.saving_kg, 2)),
      el("td", { class: "num" }, `${fmt(m.migration_cost)} ${c}`),
      el("td", { class: "num" }, `${seconds(m.predicted_duration_s)}, ${bytes(m.predicted_bytes)}`),
      el("td", { class: "num" }, `${fmt(m.predicted_downtime_ms, 0)} ms`), el("td", {}, m.reason))),
      ...(plan.moves.length > shown.length ? [el("tr", {}, el("td", { colspan: 9, class: "hint" },
        `… and ${plan.moves.length - shown.length} more moves (GET /v1/plans/${plan.id})`))] : []));
  }
  $("placement").tBodies[0].replaceChildren(...[...placement].map(([name, p]) => el("tr", {},
    el("td", {}, name), el("td", { class: "num" }, String(p.now)), el("td", { class: "num" }, String(p.then)),
    el("td", { class: "num" }, p.then === p.now ? "" : (p.then > p.now ? "+" : "") + (p.then - p.now)))));
}

async function planAction(action) {
  notice(action === "make" ? "Planning…" : "");
  try {
    if (action === "make") {
      await api("POST", "/v1/plans", { horizon_h: Number($("plan-horizon").value), mode: $("plan-mode").value });
    }
    else await api("POST", `/v1/plans/${state.plan.id}/${action}`);
    notice("");
    await refresh();
  } catch (error) { fail(error); }
}

// ---- migrations: the live Gantt -------------------------------------------

function drawGantt() {
  const rows = [...state.migrations.values()].sort((a, b) => (a.start_at || "").localeCompare(b.start_at || "") || a.id - b.id);
  if (!rows.length) {
    $("gantt").replaceChildren(el("p", { class: "hint" }, "No plan has been applied yet."));
    $("mechanisms").tBodies[0].replaceChildren();
    return;
  }
  // A migration spans its start to its predicted end, or to when it finished or to now if later.
  const span = (m) => {
    const start = Date.parse(m.start_at || m.created_at);
    const planned = (m.predicted_s || 0) * 1000;
    const running = ACTIVE.includes(m.state) && Date.now() > start ? Date.now() : 0;
    return [start, Math.max(start + planned, m.finished_at || 0, running, start + 1000)];
  };
  const t0 = Math.min(...rows.map((m) => span(m)[0]));
  const t1 = Math.max(...rows.map((m) => span(m)[1]));
  const x = (t) => `${(100 * (t - t0)) / Math.max(1, t1 - t0)}%`;
  const bar = (cls, from, to) => {
    const node = el("div", { class: `bar ${cls}` });
    node.style.left = x(from);
    node.style.width = `${Math.max(0.3, (100 * (to - from)) / Math.max(1, t1 - t0))}%`;
    return node;
  };
  const mechanisms = ["zero", "dedup", "disk_cache", "returning", "in_place", "compression"];
  const totals = { raw: 0, wire: 0, ...Object.fromEntries(mechanisms.map((k) => [k, 0])) };
  const lanes = rows.slice(0, 400).map((m) => {
    const [start, end] = span(m);
    const p = m.progress;
    if (p) {
      totals.raw += p.raw_bytes; totals.wire += p.wire_bytes;
      for (const k of mechanisms) totals[k] += p.saved_bytes?.[k] || 0;
    }
    const fraction = m.state === "done" ? 1 : p ? Math.min(1, p.wire_bytes / Math.max(1, m.predicted_bytes)) : 0;
    const kind = m.state === "done" ? "done" : ACTIVE.includes(m.state) ? "active" : "ended";
    const track = el("div", { class: "track" }, bar("planned", start, end));
    const progressed = bar(kind, start, start + fraction * (end - start));
    progressed.dataset.fraction = fraction.toFixed(3);
    track.append(progressed);
    const saved = p?.saved_bytes ? Object.entries(p.saved_bytes).filter(([, v]) => v).map(([k, v]) => `${k} ${bytes(v)}`).join(", ") : "";
    track.title = `${m.vm}: ${m.from} → ${m.to}, ${m.state}\n` +
      (p ? `${bytes(p.raw_bytes)} raw, ${bytes(p.wire_bytes)} on the wire, round ${p.round}` +
        (p.eta_s ? `, ETA ${seconds(p.eta_s)}` : "") + (saved ? `\nsaved: ${saved}` : "") : "no progress yet") +
      (m.network ? `\n${m.network}` : "");
    const cancel = ACTIVE.includes(m.state) && m.state !== "cutover" && canWrite()
      ? el("button", { class: "write cancel", onclick: () => cancelMigration(m.id) }, "Cancel") : "";
    return el("div", { class: "lane", "data-migration": m.id, "data-state": m.state },
      el("span", { class: "lane-label" }, `${m.vm} ${m.from}→${m.to}`), track,
      el("span", { class: `badge ${kind === "done" ? "ok" : kind === "active" ? "warn" : "bad"}` }, m.state), el("span", {}, cancel));
  });
  const now = Date.now() >= t0 && Date.now() <= t1 ? el("div", { class: "now-line", title: "now" }) : null;
  if (now) now.style.left = x(Date.now());
  const axis = el("div", { class: "lane axis" }, el("span", {}, `plan ${state.ganttPlan}`),
    el("div", { class: "track" }, ...[0, 0.25, 0.5, 0.75, 1].map((f) => {
      const tick = el("span", { class: "tick" }, new Date(t0 + f * (t1 - t0)).toISOString().slice(11, 19));
      tick.style.left = `${100 * f}%`;
      tick.style.transform = `translateX(${-100 * f}%)`;
      return tick;
    }), now), el("span", {}, "state"), el("span", {}));
  $("gantt").replaceChildren(axis, ...lanes,
    ...(rows.length > 400 ? [el("p", { class: "hint" }, `… and ${rows.length - 400} more`)] : []));
  $("gantt-legend").replaceChildren(
    ...[["planned", "scheduled (start to predicted end)"], ["done", "done"], ["active", "moving: share of predicted bytes sent"], ["ended", "failed, cancelled, rolled back or expired"]]
      .map(([cls, label]) => el("span", {}, el("span", { class: `swatch ${cls}` }), ` ${label}`)), el("span", {}, "times UTC"));
  $("mechanisms").tBodies[0].replaceChildren(el("tr", {}, ...["raw", "wire", ...mechanisms]
    .map((k) => el("td", { class: "num" }, bytes(totals[k])))));
}

async function cancelMigration(id) {
  try {
    const m = await api("POST", `/v1/migrations/${id}/cancel`);
    state.migrations.set(id, { ...state.migrations.get(id), ...m });
    drawGantt();
  } catch (error) { fail(error); }
}

let redraw = null;
function follow() {
  const events = new EventSource("/v1/events");
  events.onopen = () => { $("stream-state").textContent = "live"; };
  events.onerror = () => { $("stream-state").textContent = "reconnecting…"; };
  const update = (id, change) => {
    const m = state.migrations.get(id);
    if (!m) {
      // A migration of a newer plan: the next refresh picks the plan up.
      if (!redraw) redraw = setTimeout(() => { redraw = null; refresh().catch(fail); }, 500);
      return;
    }
    Object.assign(m, change);
    if (!redraw) redraw = setTimeout(() => { redraw = null; drawGantt(); }, 250);
  };
  events.addEventListener("state", (e) => {
    const news = JSON.parse(e.data);
    if (news.from === news.to) {
      // The state stays: a cap change, or a network step after the cutover (kept for the lane's tooltip).
      if (news.network) update(news.migration, { network: news.detail });
      return;
    }
    update(news.migration, { state: news.to, ...(news.to === "done" ? { finished_at: Date.parse(news.at) } : {}) });
  });
  events.addEventListener("progress", (e) => {
    const news = JSON.parse(e.data);
    update(news.migration, { state: news.state, progress: news.report });
  });
  // A lost site's VM moved to its standby, or runs there: the recovery shown (and the map) follow.
  events.addEventListener("recovered", (e) => {
    const news = JSON.parse(e.data);
    if (!redraw) redraw = setTimeout(() => { redraw = null; refresh().catch(fail); }, 500);
    if ($("fail-site").value === news.from) drawRecovery().catch(fail);
  });
}

// ---- savings -------------------------------------------------------------

async function drawSavings() {
  state.savingsAt = Date.now();
  const savings = await api("GET", "/v1/savings?days=14");
  const c = savings.currency;
  $("savings-total").replaceChildren(
    `To date (14 days): ${amount(savings.total_cost_saved)} ${c} and ${amount(savings.total_kg_saved)} kg CO2e saved, `,
    `${savings.days.reduce((n, d) => n + d.migrations, 0)} migrations, net of their network energy and egress. `,
    savings.synthetic ? el("span", { class: "badge warn" }, "priced on synthetic demo signals") : "");
  const xs = savings.days.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000);
  const bars = (id, title, unit, values, colour) => {
    const box = $(id);
    box.dataset.points = String(values.length);
    state.charts[id]?.destroy();
    state.charts[id] = new uPlot({
      title, width: Math.max(300, box.clientWidth || 560), height: 220,
      scales: { x: { time: true } },
      axes: [{ label: "day (UTC)" }, { label: unit, size: 60 }],
      series: [{ value: (u, v) => v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10) },
        { label: unit, fill: colour, stroke: colour, paths: uPlot.paths.bars({ size: [0.6, 40] }), value: (u, v) => v === null ? "–" : amount(v) }],
    }, [xs, values], box);
  };
  bars("chart-saved-cost", "Cost saved per day", c, savings.days.map((d) => d.cost_saved), "#16a34a");
  bars("chart-saved-kg", "Emissions saved per day", "kg CO2e", savings.days.map((d) => d.kg_saved), "#0d9488");
}

// ---- evacuation ----------------------------------------------------------

/// A list of VMs under a summary line, or nothing when there are none.
const vmList = (title, items, line) => items.length ? el("details", {}, el("summary", {}, `${title}: ${items.length}`),
  el("ul", {}, items.slice(0, 200).map((e) => el("li", {}, line(e))))) : "";

const point = (e) => e.recovery_point ? `, recovery point ${time(e.recovery_point)}` : "";

async function evacuate(dryRun) {
  const site = state.overview.sites.find((s) => s.name === $("evacuate-site").value);
  const minutes = Number($("evacuate-deadline").value);
  if (!site || !(minutes >= 1)) return;
  notice("");
  try {
    const report = await api("POST", `/v1/sites/${site.id}/evacuate`, { deadline_s: minutes * 60, dry_run: dryRun });
    const line = (e) => `${e.vm}${e.to ? ` → ${e.to}` : ""}` +
      `${e.predicted_finish_s ? ` in ${seconds(e.predicted_finish_s)}` : ""}${point(e)}${e.why ? ` (${e.why})` : ""}`;
    const synced = report.synced || [];
    $("evacuate-report").replaceChildren(
      el("p", { id: "evacuate-outcome" }, `${dryRun ? "Predicted" : "Evacuating"} ${report.site} within ${minutes} min: `,
        `${report.out_in_time.length} live, ${synced.length} synced a last time, ${report.late.length} late, ` +
        `${report.staying.length} staying (plan ${report.plan_id}).`),
      vmList("live, out in time", report.out_in_time, line), vmList("synced: their replicas get a final sync", synced, line),
      vmList("late", report.late, line), vmList("staying", report.staying, line));
    $("evacuate-confirm").disabled = !dryRun;
    if (!dryRun) await refresh();
  } catch (error) { fail(error); }
}

/// What became of a lost site's VMs (or would, for a prediction).
function showRecovery(report, dryRun) {
  const ended = (v) => v.state === "lost" || v.state === "failed";
  const recovered = report.vms.filter((v) => !ended(v)), lost = report.vms.filter(ended);
  const line = (v) => `${v.vm} → ${v.to ?? "nowhere"}: ${v.state}${point(v)}` +
    `${v.rpo_s !== null && v.rpo_s !== undefined ? ` (${seconds(v.rpo_s)} before the failure)` : ""}` +
    `${v.lost_bytes ? `, ${bytes(v.lost_bytes)} written since` : ""}${v.detail ? ` (${v.detail})` : ""}`;
  const running = recovered.filter((v) => v.state === "running").length;
  $("recovery-report").replaceChildren(
    el("p", { id: "recovery-outcome" }, report.failed_at === null ? `${report.site} has not failed.` :
      `${dryRun ? "Predicted for" : "Recovery of"} ${report.site}: ${recovered.length} recovered at their standbys` +
      `${dryRun ? "" : ` (${running} running)`}, ${lost.length} lost` +
      `${report.fenced_by ? `; restarts wait until ${time(report.fenced_by)}, when its executors' lease ends` : ""}.`),
    vmList("recovered", recovered, line), vmList("lost", lost, line));
}

async function failSite(dryRun) {
  const site = state.overview.sites.find((s) => s.name === $("fail-site").value);
  if (!site) return;
  notice("");
  try {
    const reason = dryRun ? "" : "declared lost from the dashboard";
    showRecovery(await api("POST", `/v1/sites/${site.id}/fail`, { dry_run: dryRun, reason }), dryRun);
    $("fail-confirm").disabled = !dryRun;
    if (!dryRun) await refresh();
  } catch (error) { fail(error); }
}

/// Sites whose executors have all gone silent: they may be lost, which an operator confirms.
function drawSilent() {
  const silent = state.overview.sites.filter((s) => s.silent_since);
  $("silent-sites").replaceChildren(...silent.map((s) => el("p", { class: "silent" },
    `${s.name} is silent: its executors were last heard at ${time(s.silent_since)}. If it is lost, declare it below.`)));
}

/// A site chosen in the lost-site form: if it failed, what became of its VMs.
async function drawRecovery() {
  const site = state.overview.sites.find((s) => s.name === $("fail-site").value);
  $("fail-confirm").disabled = true;
  $("recovery-report").replaceChildren();
  if (site) showRecovery(await api("GET", `/v1/sites/${site.id}/recovery`), false);
}

// ---- wiring --------------------------------------------------------------

function wireActions() {
  $("signal-site").addEventListener("change", () => drawSignals().catch(fail));
  $("fail-site").addEventListener("change", () => drawRecovery().catch(fail));
  if (!canWrite()) return;
  $("plan-form").addEventListener("submit", (event) => { event.preventDefault(); planAction("make"); });
  $("plan-approve").addEventListener("click", () => planAction("approve"));
  $("plan-apply").addEventListener("click", () => planAction("apply"));
  $("evacuate-form").addEventListener("submit", (event) => { event.preventDefault(); evacuate(true); });
  $("evacuate-confirm").addEventListener("click", () => evacuate(false));
  $("evacuate-site").addEventListener("change", () => { $("evacuate-confirm").disabled = true; });
  $("fail-form").addEventListener("submit", (event) => { event.preventDefault(); failSite(true); });
  $("fail-confirm").addEventListener("click", () => failSite(false));
}

window.addEventListener("DOMContentLoaded", () => start().catch(fail));
