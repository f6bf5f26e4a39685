// Loads pages in Debian's Chromium (headless, driven by playwright-core)
// that call an API on another origin with fetch(), and prints what each
// page's script reported (its window.results) as JSON: the browser's own
// CORS checks decide what the scripts may read.
//
//   node cors.mjs URL [URL...]
import { chromium } from "playwright-core";

const urls = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const out = {};
try {
  for (const url of urls) {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", e => errors.push(String(e)));
    await page.goto(url);
    await page.waitForFunction(() => window.results !== undefined, null, { timeout: 30000 });
    out[url] = { results: await page.evaluate(() => window.results), errors };
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
