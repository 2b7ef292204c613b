// Opens an HTML report in headless Chromium (Debian's, through playwright-core), takes a
// full-page screenshot, and prints the sections, their headings and the number of charts.
//
// usage: node report_page.mjs REPORT.html SCREENSHOT.png
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const [file, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(pathToFileURL(file).href);
  const sections = await page.$$eval("section", (s) => s.map((x) => ({ id: x.id, heading: x.querySelector("h2")?.textContent ?? "" })));
  const charts = await page.$$eval("svg.chart", (s) => s.length);
  const cards = await page.$$eval(".card", (c) => c.map((x) => x.textContent));
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ title: await page.title(), sections, charts, cards }));
} finally {
  await browser.close();
}
