// The dashboard in a real browser (Debian's Chromium driven by
// playwright-core), against a live `heliotrope demo --no-rebalance`.
// Run by tests/api/dashboard.rs, which starts the demo and makes the tokens:
//   HELIOTROPE_URL, PLANNER_TOKEN, VIEWER_TOKEN, ARTIFACTS (screenshot folder), CHROMIUM (optional).
// Prints each step; exits non-zero at the first that fails.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { test } from "node:test";
import { chromium } from "playwright-core";

const url = process.env.HELIOTROPE_URL;
const artifacts = process.env.ARTIFACTS || "tests/browser/artifacts";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
assert.ok(url && process.env.PLANNER_TOKEN && process.env.VIEWER_TOKEN, "set HELIOTROPE_URL, PLANNER_TOKEN, VIEWER_TOKEN");
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
test.after(() => browser.close());

/// A fresh browser context signed in with `token`, collecting the page's console errors from
/// its first load on (before sign-in too: asking whether a session exists is no error).
async function signedIn(token) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(url);
  await page.locator("#signin").waitFor({ state: "visible" });
  await page.fill("#token", token);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#role").waitFor();
  // Load it again as a signed-in planner would open it.
  await page.reload();
  await page.locator("#role").waitFor();
  await page.waitForFunction(() => document.querySelectorAll("#sites .site-marker").length > 0);
  return { context, page, errors };
}

const shot = (page, name, selector) =>
  (selector ? page.locator(selector) : page).screenshot({ path: `${artifacts}/${name}.png`, ...(selector ? {} : { fullPage: true }) });

test("a planner sees the fleet, approves and applies a plan, and watches it move", async () => {
  const { context, page, errors } = await signedIn(process.env.PLANNER_TOKEN);
  assert.equal(await page.textContent("#role"), "planner");

  // The map: its countries, and every site of the inventory.
  const overview = await (await context.request.get(`${url}/v1/overview`)).json();
  assert.ok(overview.sites.length >= 2, "the demo has sites");
  assert.ok(await page.locator("#countries path").count() >= 170, "the 110m countries are drawn");
  const markers = await page.locator("#sites .site-marker").evaluateAll((nodes) => nodes.map((n) => n.dataset.site));
  assert.deepEqual(markers.sort(), overview.sites.map((s) => s.name).sort());
  assert.ok((await page.getAttribute("#night", "d")).length > 20, "the night side is shaded");
  await shot(page, "map", "#map");

  // Signals: both charts have points, actual and forecast, and say their basis.
  await page.waitForFunction(() => Number(document.getElementById("chart-carbon").dataset.points) > 0
    && Number(document.getElementById("chart-price").dataset.points) > 0);
  assert.match(await page.textContent("#signal-basis"), /synthetic/);
  assert.equal(await page.locator("#feed-health tbody tr").count(), overview.sites.length);
  await shot(page, "signals", "#signals");

  // Plan: make one, approve it, apply it, all by clicking.
  await page.click("#plan-make");
  await page.locator("#plan-status[data-status=proposed]").waitFor({ timeout: 60_000 });
  const moves = await page.locator("#moves tbody tr").count();
  assert.ok(moves > 0, "the plan moves VMs");
  assert.match(await page.textContent("#objective"), /objective/);
  await shot(page, "plan", "#plan");
  await page.click("#plan-approve");
  await page.locator("#plan-status[data-status=approved]").waitFor();
  const planId = Number((await page.textContent("#plan-status")).match(/Plan (\d+)/)[1]);
  await page.click("#plan-apply");

  // Migrations: the plan's moves appear in the Gantt and progress live (server-sent events).
  await page.waitForFunction((id) => document.querySelector("#gantt .axis")?.textContent.includes(`plan ${id}`), planId, { timeout: 30_000 });
  const lanes = page.locator("#gantt .lane[data-migration]");
  assert.equal(await lanes.count(), Math.min(moves, 300));
  await page.waitForFunction(() => [...document.querySelectorAll("#gantt .lane[data-migration]")]
    .some((lane) => lane.dataset.state === "done"), null, { timeout: 120_000 });
  assert.equal(await page.textContent("#stream-state"), "live");
  await shot(page, "migrations", "#migrations");

  // Savings per day, and an evacuation predicted before it is confirmed.
  await page.waitForFunction(() => Number(document.getElementById("chart-saved-cost").dataset.points) > 0);
  assert.match(await page.textContent("#savings-total"),
    /^To date \(14 days\): -?[\d,.]+ USD and -?[\d,.]+ kg CO2e saved, \d+ migrations.*synthetic/);
  await shot(page, "savings", "#savings");
  // The least loaded site leaves: the others can take its VMs whatever the demo's random draw
  // (the most loaded one, where the plan just moved VMs, may not fit anywhere else).
  const now = await (await context.request.get(`${url}/v1/overview`)).json();
  const leaving = now.sites.reduce((a, b) => (a.vcpus_used <= b.vcpus_used ? a : b));
  await page.selectOption("#evacuate-site", leaving.name);
  await page.fill("#evacuate-deadline", "45");
  await page.click("#evacuate-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("evacuate-outcome") || document.getElementById("notice").textContent,
    null, { timeout: 60_000 });
  assert.equal(await page.textContent("#notice"), "", "no error shown");
  assert.match(await page.textContent("#evacuate-outcome"), /^Predicted/);
  assert.ok(await page.isEnabled("#evacuate-confirm"));
  await shot(page, "evacuate", "#evacuate");
  await page.click("#evacuate-confirm");
  await page.waitForFunction(() => document.getElementById("evacuate-outcome")?.textContent.startsWith("Evacuating"), null, { timeout: 60_000 });
  const site = await (await context.request.get(`${url}/v1/sites/${leaving.id}`)).json();
  assert.equal(site.state, "draining", "confirming drains the site");
  // The same site then lost: its recovery predicted, then declared; its VMs restart at their standbys or are lost.
  await page.selectOption("#fail-site", leaving.name);
  await page.click("#fail-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("recovery-outcome")?.textContent.startsWith("Predicted")
    || document.getElementById("notice").textContent, null, { timeout: 60_000 });
  assert.equal(await page.textContent("#notice"), "", "no error shown");
  assert.match(await page.textContent("#recovery-outcome"), /^Predicted for .*: \d+ recovered at their standbys, \d+ lost/);
  await page.click("#fail-confirm");
  await page.waitForFunction(() => document.getElementById("recovery-outcome")?.textContent.startsWith("Recovery of"),
    null, { timeout: 60_000 });
  await shot(page, "recovery", "#evacuate");
  const lost = await (await context.request.get(`${url}/v1/sites/${leaving.id}`)).json();
  assert.equal(lost.state, "down", "declaring it lost marks it down");

  await shot(page, "dashboard");
  assert.deepEqual(errors, [], "no console errors");
  await context.close();
});

test("a viewer sees everything but no write button, and a forged write is refused", async () => {
  const { context, page, errors } = await signedIn(process.env.VIEWER_TOKEN);
  assert.equal(await page.textContent("#role"), "viewer");
  await page.waitForFunction(() => Number(document.getElementById("chart-carbon").dataset.points) > 0);
  for (const selector of ["#plan-make", "#plan-approve", "#plan-apply", "#evacuate-form", "#fail-form", "button.cancel"]) {
    assert.equal(await page.locator(selector).count(), 0, `${selector} is not on a viewer's page`);
  }
  const visible = await page.locator("main button:visible").count();
  assert.equal(visible, 0, "no button at all in the dashboard (sign-out is in the header)");
  assert.ok(await page.locator("#gantt .lane[data-migration]").count() > 0, "the viewer sees the migrations");

  assert.deepEqual(errors, [], "no console errors");

  // The page's own session and CSRF token, used to write anyway: the server refuses.
  const forged = await page.evaluate(async () => {
    const session = await (await fetch("/v1/session")).json();
    const post = (path, body) => fetch(path, { method: "POST", headers: { "Content-Type": "application/json",
      "X-CSRF-Token": session.csrf_token }, body: JSON.stringify(body) }).then((r) => r.status);
    return { plan: await post("/v1/plans", {}), evacuate: await post("/v1/sites/1/evacuate", { deadline_s: 60 }) };
  });
  assert.deepEqual(forged, { plan: 403, evacuate: 403 });
  await shot(page, "viewer");
  await context.close();
});
