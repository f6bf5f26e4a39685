// Loads the mesh page in Debian's Chromium (headless, driven by
// playwright-core, no browser of its own), waits until it shows what the
// test waits for, and prints what it shows as JSON; keeps a screenshot.
//
//   node mesh_page.mjs URL SCREENSHOT.png [TIMEOUT_MS]
//
// It waits (bounded) until the page has refreshed itself with a split of
// two versions and at least one problem; the caller asserts on the JSON.
import { chromium } from "playwright-core";

const [url, shot, timeout = "60000"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // The machine's network is closed: no background fetches, no sandbox
  // (the tests run as root).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let out = { ok: false };
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1100 } });
  const requests = [];
  page.on("request", r => requests.push(r.url()));
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  await page.goto(url);
  try {
    await page.waitForFunction(() =>
      document.body.dataset.loaded === "true" &&
      [...document.querySelectorAll(".split")].some(s => s.querySelectorAll(".version").length >= 2) &&
      document.querySelectorAll(".problem").length > 0,
      null, { timeout: Number(timeout), polling: 500 });
  } catch (e) {
    out.wait_error = String(e);
  }
  const shown = await page.evaluate(() => ({
    status: document.getElementById("status").textContent,
    nodes: [...document.querySelectorAll("svg .node")].map(n => ({ id: n.dataset.node, kind: n.getAttribute("class") })),
    graph_edges: [...document.querySelectorAll("svg .edge")].map(e => ({
      edge: e.dataset.edge, label: e.querySelector("text")?.textContent, lock: !!e.querySelector(".lock"),
      lock_title: e.querySelector(".lock title")?.textContent || null,
    })),
    edges: [...document.querySelectorAll("#edges tr[data-edge]")].map(tr => ({
      edge: tr.dataset.edge, protocol: tr.dataset.protocol, mtls: tr.dataset.mtls,
      cells: [...tr.children].map(td => td.textContent),
      explain: tr.querySelector("a.explain")?.getAttribute("href") || null,
    })),
    splits: [...document.querySelectorAll(".split")].map(s => ({
      service: s.dataset.service,
      versions: [...s.querySelectorAll(".version")].map(v => ({
        version: v.dataset.version, workload: v.dataset.workload, share: Number(v.dataset.share), text: v.textContent,
      })),
    })),
    problems: [...document.querySelectorAll(".problem")].map(p => ({ code: p.dataset.code, text: p.textContent })),
  }));
  await page.screenshot({ path: shot, fullPage: true });
  out = { ok: true, ...out, ...shown, errors, requests: [...new Set(requests)] };
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
