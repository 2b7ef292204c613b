// Drives the approvals page on the gateway's admin listener in headless Chromium (Debian's,
// through playwright-core): sign in with a reviewer token, wait for the held call to be
// listed, screenshot, press Approve (or Deny with a reason), wait for the confirmation.
// Prints what the page showed as JSON.
//
// usage: node approve_page.mjs ADMIN_URL TOKEN TOOL approve|deny SCREENSHOT.png [REASON]
import { chromium } from "playwright-core";

const [admin, token, tool, verb, shot, reason] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.on("dialog", (d) => d.accept(reason || ""));
  await page.goto(`${admin}/approvals/ui`);
  await page.fill("#token", token);
  await page.click("#login button");
  const row = page.locator("#pending tbody tr", { hasText: tool });
  await row.first().waitFor({ timeout: 20000 });
  const who = await page.textContent("#who");
  const cells = await row.first().locator("td").allTextContents();
  await page.screenshot({ path: shot, fullPage: true });
  await row.first().locator(verb === "approve" ? "button.approve" : "button.deny").click();
  await page.waitForFunction(() => /^(Approved|Denied) /.test(document.getElementById("msg").textContent), null, { timeout: 10000 });
  const msg = await page.textContent("#msg");
  console.log(JSON.stringify({ who, cells, msg }));
} finally {
  await browser.close();
}
