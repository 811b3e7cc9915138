// How fast the dashboard is on a live server, in Chromium:
//   node tests/browser/measure.mjs URL PLANNER_TOKEN
// (against, say, `heliotrope demo --sites all --vms 10000 --no-rebalance`).
// Signs in, loads the page three times (until every view is drawn), makes a
// 24 h plan and applies it by clicking, and prints one JSON line of timings.
// It changes the fleet: run it on a demo, not a fleet that matters.

import { chromium } from "playwright-core";

const [url, token] = process.argv.slice(2);
if (!url || !token) throw new Error("usage: node measure.mjs URL PLANNER_TOKEN");
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.on("pageerror", (error) => console.error("page error:", error.message));
await page.goto(url);
await page.fill("#token", token);
await page.click("#signin-form button[type=submit]");
await page.locator("#role").waitFor();
const loads_ms = [];
for (let i = 0; i < 3; i++) {
  const start = Date.now();
  await page.reload();
  await page.waitForFunction(() => Number(document.getElementById("chart-saved-cost")?.dataset.points) > 0);
  loads_ms.push(Date.now() - start);
}
const overview = await (await page.context().request.get(`${url}/v1/overview`)).json();
let start = Date.now();
await page.fill("#plan-horizon", "24");
await page.click("#plan-make");
await page.locator("#plan-status[data-status=proposed]").waitFor({ timeout: 300_000 });
const plan_ms = Date.now() - start;
const moves = Number((await page.textContent("#plan-summary")).match(/(\d+) moves/)[1]);
await page.click("#plan-approve");
await page.locator("#plan-status[data-status=approved]").waitFor();
start = Date.now();
await page.click("#plan-apply");
await page.waitForFunction(() => document.querySelectorAll("#gantt .lane[data-migration]").length > 0, null, { timeout: 120_000 });
const apply_ms = Date.now() - start;
const heap_mb = (await page.evaluate(() => performance.memory?.usedJSHeapSize ?? 0)) / 1e6;
await browser.close();
console.log(JSON.stringify({
  sites: overview.sites.length, vms: overview.sites.reduce((n, s) => n + s.vms, 0), moves,
  load_ms: loads_ms, plan_made_and_drawn_ms: plan_ms, applied_and_gantt_drawn_ms: apply_ms, js_heap_mb: Number(heap_mb.toFixed(1)),
}));
