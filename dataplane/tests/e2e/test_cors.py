"""CORS: a web page from an origin the gateway serves (`gateway.allowed_origins`, or a loopback
one) may call it cross-origin. The gateway decides which origins may call, so it answers for
CORS itself: it answers preflights (never forwarded), drops the upstream's `Access-Control-*`
headers, and puts its own on every answer to such a page — the upstream's and its own errors.
Tested in a real browser (headless Chromium) and on the wire."""

import json
import socket
import subprocess

from conftest import HERE, NODE

APP = "http://chat.example.test:8000"


def web_client(port: int, path: str, *origins: str) -> list[dict]:
    r = subprocess.run([NODE, str(HERE / "clients" / "web_client.mjs"), str(port), path, *origins], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.strip().splitlines() if line.startswith("{")]


def test_a_web_client_in_a_real_browser_runs_a_session_through_the_gateway(py_json, gateway):
    g = gateway([{"path": "/mcp", "upstream": py_json}], gateway_keys=f'allowed_origins = ["{APP}"]\n')
    listed, loopback, other = web_client(g.port, "/mcp", APP, "http://localhost:9", "http://evil.example.test")
    for page in (listed, loopback):
        init = page["initialize"]
        assert init["status"] == 200 and init["body"]["result"]["serverInfo"]["name"] == "sluice-e2e-py", page
        assert init["sid"] and init["sid"].count(".") >= 2, "the page reads the session id the gateway handed out"
        assert page["initialized"] == 202, page
        assert page["call"]["status"] == 200 and page["call"]["body"]["result"]["content"][0]["text"] == "FROM THE BROWSER", page
        # The gateway's own error is readable too: the page learns why, not just "failed".
        assert page["altered"]["status"] == 404 and "start one with initialize" in page["altered"]["body"]["error"]["data"]["reason"], page
        assert page["delete"] == 200, page
    # An origin the gateway does not serve gets nothing through: its preflight is refused.
    assert "error" in other["initialize"] and "Failed to fetch" in other["initialize"]["error"], other
    assert g.await_metric("sluice_requests_total", lambda v: v >= 1, status="403") >= 1


def raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        top, rest = data.split(b"\r\n\r\n", 1)
        lines = top.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            n, v = line.split(":", 1)
            headers.setdefault(n.strip().lower(), []).append(v.strip())
        length = int(headers.get("content-length", ["0"])[0])
        while len(rest) < length:
            rest += s.recv(65536)
        return int(lines[0].split()[1]), headers, rest


def test_preflights_are_the_gateways_and_upstream_cors_headers_are_replaced(raw_upstream, gateway):
    def handler(conn, head, body):
        out = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: up-1\r\n"
                     b"access-control-allow-origin: *\r\naccess-control-allow-credentials: true\r\nx-total: 7\r\n"
                     + f"content-length: {len(out)}\r\n\r\n".encode() + out)

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}, {"path": "/api", "upstream": up.url("/api"), "kind": "http"}],
                gateway_keys=f'allowed_origins = ["{APP}"]\n')
    pre = (f"OPTIONS /mcp HTTP/1.1\nHost: 127.0.0.1\nOrigin: {APP}\nAccess-Control-Request-Method: POST\n"
           "Access-Control-Request-Headers: content-type, mcp-session-id, authorization\nAccess-Control-Request-Private-Network: true")
    status, h, _ = raw(g.port, pre)
    assert status == 204, h
    assert h["access-control-allow-origin"] == [APP] and h["access-control-allow-methods"] == ["GET, POST, DELETE"], h
    assert h["access-control-allow-headers"] == ["content-type, mcp-session-id, authorization"], h
    assert h["access-control-allow-private-network"] == ["true"] and h["access-control-max-age"] == ["600"], h
    # On a plain route the method asked for is granted; a header list that is no list is not echoed.
    status, h, _ = raw(g.port, f"OPTIONS /api/orders HTTP/1.1\nHost: 127.0.0.1\nOrigin: {APP}\nAccess-Control-Request-Method: PATCH\n"
                       "Access-Control-Request-Headers: x-a, x-b: 1")
    assert status == 204 and h["access-control-allow-methods"] == ["PATCH"] and "access-control-allow-headers" not in h, h
    assert up.requests == [], "no preflight reached the upstream"
    # A preflight from an origin the gateway does not serve is refused, without CORS headers.
    status, h, _ = raw(g.port, pre.replace(APP, "http://evil.example.test"))
    assert status == 403 and not any(k.startswith("access-control-") for k in h), h
    # An answer to the page carries the gateway's CORS headers, not the upstream's.
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    status, h, _ = raw(g.port, f"POST /mcp HTTP/1.1\nHost: 127.0.0.1\nOrigin: {APP}\nContent-Type: application/json\n"
                       f"Accept: application/json, text/event-stream\nContent-Length: {len(body)}", body)
    assert status == 200 and h["access-control-allow-origin"] == [APP] and "access-control-allow-credentials" not in h, h
    assert "mcp-session-id" in h["access-control-expose-headers"][0] and h["vary"] == ["origin"], h
    status, h, _ = raw(g.port, f"GET /api/orders HTTP/1.1\nHost: 127.0.0.1\nOrigin: {APP}")
    assert status == 200 and h["access-control-allow-origin"] == [APP] and h["access-control-expose-headers"] == ["*"] and h["x-total"] == ["7"], h
    # Without Origin (agents, SDKs) nothing changes but that the upstream's CORS headers go.
    status, h, _ = raw(g.port, "GET /api/orders HTTP/1.1\nHost: 127.0.0.1")
    assert status == 200 and not any(k.startswith("access-control-") for k in h), h
    # The gateway's own errors carry them too (no route here: answered before any route).
    status, h, body = raw(g.port, f"GET /nowhere HTTP/1.1\nHost: 127.0.0.1\nOrigin: {APP}")
    assert status == 404 and h["access-control-allow-origin"] == [APP] and json.loads(body)["error"]["code"], h
    # An OPTIONS that is no preflight (no Origin) is the upstream's.
    raw(g.port, "OPTIONS /api/orders HTTP/1.1\nHost: 127.0.0.1")
    assert len(up.requests) == 4 and up.requests[-1].startswith(b"OPTIONS /api/orders")
