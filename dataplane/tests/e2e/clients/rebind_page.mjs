// A DNS-rebinding attack in headless Chromium (Debian's, through playwright-core). The
// attacker's page is served for http://NAME:PORT/ — as when NAME's first DNS answer pointed at
// the attacker's server — and NAME then resolves to 127.0.0.1 (`--host-resolver-rules`), so the
// page is same-origin with whatever listens on PORT there. It fetches PATH (GET: the browser
// sends no Origin; and POST: it does) and prints what it could read, as JSON.
//
// Chromium's own Local Network Access checks are switched off: the gateway must not depend on
// one browser's defence (others have none, and older Chromium neither).
//
// usage: node rebind_page.mjs PORT NAME PATH
import { chromium } from "playwright-core";

const [port, name, path] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         `--host-resolver-rules=MAP ${name} 127.0.0.1`,
         "--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults,BlockInsecurePrivateNetworkRequests"],
});
try {
  const page = await browser.newPage();
  const origin = `http://${name}:${port}`;
  await page.route(`${origin}/cats.html`, (r) => r.fulfill({ status: 200, contentType: "text/html", body: "<!doctype html><title>cats</title><p>cute cats</p>" }));
  await page.goto(`${origin}/cats.html`);
  const seen = await page.evaluate(async (path) => {
    const attempt = async (init) => {
      try {
        const r = await fetch(path, init);
        return { status: r.status, body: await r.text() };
      } catch (e) {
        return { error: String(e) };
      }
    };
    return {
      location: location.href,
      get: await attempt({}),
      post: await attempt({ method: "POST", headers: { "content-type": "text/plain" }, body: "{}" }),
    };
  }, path);
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
