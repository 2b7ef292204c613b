// A web MCP client in headless Chromium (Debian's, through playwright-core): a page served for
// ORIGIN (answered by the browser itself, so any origin can be played) calls the gateway at
// http://127.0.0.1:PORT/PATH cross-origin with fetch — initialize, read Mcp-Session-Id, the
// initialized notification, a tool call, an altered session id, DELETE — as a browser-based
// agent or inspector does. The browser enforces CORS: every step it refuses shows as an error.
// Prints one JSON object per origin.
//
// Chromium's Local Network Access checks are off (the page's address is unknown to it; the
// gateway's answer to them is tested on the wire).
//
// usage: node web_client.mjs PORT PATH ORIGIN [ORIGIN…]
import { chromium } from "playwright-core";

const [port, path, ...origins] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults,BlockInsecurePrivateNetworkRequests"],
});
try {
  for (const origin of origins) {
    const page = await browser.newPage();
    await page.route(`${origin}/app.html`, (r) => r.fulfill({ status: 200, contentType: "text/html", body: "<!doctype html><title>agent</title>" }));
    await page.goto(`${origin}/app.html`);
    const seen = await page.evaluate(async (gw) => {
      const h = { "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18" };
      const out = {};
      const step = async (name, f) => {
        try {
          out[name] = await f();
        } catch (e) {
          out[name] = { error: String(e) };
        }
      };
      let sid = null;
      await step("initialize", async () => {
        const r = await fetch(gw, { method: "POST", headers: h, body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize",
          params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "web-e2e", version: "1" } } }) });
        sid = r.headers.get("mcp-session-id");
        return { status: r.status, sid, body: await r.json() };
      });
      if (!sid) return out;
      const hs = { ...h, "mcp-session-id": sid };
      await step("initialized", async () => (await fetch(gw, { method: "POST", headers: hs, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) })).status);
      await step("call", async () => {
        const r = await fetch(gw, { method: "POST", headers: hs, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "shout", arguments: { text: "from the browser" } } }) });
        return { status: r.status, body: await r.json() };
      });
      await step("altered", async () => {
        const r = await fetch(gw, { method: "POST", headers: { ...hs, "mcp-session-id": sid + "x" }, body: JSON.stringify({ jsonrpc: "2.0", id: 3, method: "tools/list" }) });
        return { status: r.status, body: await r.json() };
      });
      await step("delete", async () => (await fetch(gw, { method: "DELETE", headers: { "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18" } })).status);
      return out;
    }, `http://127.0.0.1:${port}${path}`);
    console.log(JSON.stringify({ origin, ...seen }));
    await page.close();
  }
} finally {
  await browser.close();
}
