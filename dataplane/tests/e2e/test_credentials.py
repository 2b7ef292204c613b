"""Credential injection: the upstream receives the gateway's credential for it and never the
agent's; the credential never comes back to the agent, nor into the record or the log."""

import json
import time

import httpx

from conftest import spool_events

SECRET = "ghs_UpstreamOnly0123456789abcdefXYZ"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def with_credential(g, credential: str):
    """Give the gateway's first upstream `credential` (TOML inline table) and reload (the fixture
    writes one upstream per route, without credentials)."""
    cfg = g.config.read_text().replace('[[upstream]]\nname = "u0"\n', f'[[upstream]]\nname = "u0"\ncredential = {credential}\n')
    g.config.write_text(cfg)
    g.proc.p.send_signal(1)
    for _ in range(100):
        if g.metric("sluice_config_reloads_total") >= 1:
            return
        time.sleep(0.2)
    raise AssertionError("the configuration was not reloaded")


def test_upstream_gets_the_injected_credential_and_never_the_agents(gateway, raw_upstream, tmp_path):
    def handler(conn, head, body):
        # A careless upstream that echoes what it was sent.
        auth = next((l.split(b":", 1)[1].strip().decode() for l in head.split(b"\r\n") if l.lower().startswith(b"authorization:")), "")
        out = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {"content": [{"type": "text", "text": f"you sent {auth}"}]}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-contact: bob@example.com\r\nx-echo: " + auth.encode() + b"\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(handler)
    (tmp_path / "upstream.token").write_text(SECRET + "\n")
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    with_credential(g, f'{{ kind = "bearer", file = "{tmp_path / "upstream.token"}" }}')
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    r = httpx.post(g.url(), json=call, headers={**ACCEPT, "authorization": "Bearer agent-own-token-123", "x-api-key": "agent-key"}, timeout=10)
    assert r.status_code == 200, r.text
    sent = up.requests[-1].decode()
    headers = sent.split("\r\n\r\n")[0].lower()
    assert f"authorization: bearer {SECRET}".lower() in headers
    assert "agent-own-token-123" not in sent and "agent-key" not in sent
    text = r.json()["result"]["content"][0]["text"]
    assert SECRET not in r.text and "[REDACTED:upstream-credential]" in text, text
    # Echoed in a response header too: replaced there as well.
    assert r.headers["x-echo"] == "Bearer [REDACTED:upstream-credential]" and SECRET not in str(r.headers), r.headers
    # A finding in a header before the echoed one is masked all the same (the replacements are
    # applied in header order).
    assert r.headers["x-contact"].startswith("[") and "bob@example.com" not in r.headers["x-contact"], r.headers
    g.proc.stop()
    assert SECRET not in json.dumps(spool_events(g.spool))
    assert SECRET not in g.proc.log.read_text()


def test_a_credential_echoed_in_a_streamed_text_answer_is_replaced_at_any_cut(gateway, raw_upstream, tmp_path):
    """A plain HTTP route whose upstream echoes the key the gateway injects — in a text answer
    streamed in pieces, and in a header. The key is not one detection would recognise (a
    passphrase), so only the credential scrub stands between it and the agent; the answer is cut
    so that the key straddles writes."""
    passphrase = "orchid-lantern-velvet-92"

    def handler(conn, head, body):
        key = next((l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"x-partner-key:")), b"")
        text = b"log line\n" * 3000 + b"debug: partner key=" + key + b" (from the request)\n" + b"done\n" * 100
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-echo-key: " + key + f"\r\ncontent-length: {len(text)}\r\n\r\n".encode())
        at = text.index(key) + len(key) // 2
        for part in (text[:at], text[at:]):  # the key split across two writes
            conn.sendall(part)
            time.sleep(0.05)

    up = raw_upstream(handler)
    (tmp_path / "partner.key").write_text(passphrase + "\n")
    g = gateway([{"path": "/api", "upstream": up.url("/api"), "kind": "http"}])
    with_credential(g, f'{{ kind = "header", header = "X-Partner-Key", file = "{tmp_path / "partner.key"}" }}')
    r = httpx.get(g.url("/api/log"), timeout=10)
    assert r.status_code == 200 and f"x-partner-key: {passphrase}".encode() in up.requests[-1].lower(), up.requests[-1][:300]
    assert passphrase not in r.text and "partner key=[REDACTED:upstream-credential] (from the request)" in r.text, r.text[-300:]
    assert r.text.count("log line") == 3000 and r.text.endswith("done\n" * 100), "everything else as sent"
    assert r.headers["x-echo-key"] == "[REDACTED:upstream-credential]", r.headers
    g.proc.stop()
    assert passphrase not in json.dumps(spool_events(g.spool)) and passphrase not in g.proc.log.read_text()


def test_an_upstream_refusing_the_injected_credential_is_the_gateways_error_not_the_agents(gateway, raw_upstream, tmp_path):
    """An upstream answering 401 to the credential the gateway injects: the agent holds no
    credential for it, and its SDK must not be sent after the upstream's authorization server,
    so it gets 502/-32001 saying an operator must renew the credential — not the 401 and its
    challenge. Without an injected credential the upstream's 401 passes, its RFC 6750 JSON body
    (not JSON-RPC) included: an agent holding its own token for the upstream runs the upstream's
    authorization through the gateway (this body was once refused as a broken exchange)."""
    def handler(conn, head, body):
        out = b'{"error":"invalid_token"}'
        conn.sendall(b'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer resource_metadata="http://upstream.example/.well-known/oauth-protected-resource"\r\n'
                     b"content-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    r = httpx.post(g.url(), json=call, headers=ACCEPT, timeout=10)
    assert r.status_code == 401 and "resource_metadata" in r.headers["www-authenticate"], r.text
    assert r.json() == {"error": "invalid_token"}
    (tmp_path / "upstream.token").write_text(SECRET + "\n")
    with_credential(g, f'{{ kind = "bearer", file = "{tmp_path / "upstream.token"}" }}')
    r = httpx.post(g.url(), json=call, headers=ACCEPT, timeout=10)
    assert r.status_code == 502 and "www-authenticate" not in r.headers, (r.status_code, r.headers)
    body = r.json()
    assert body["id"] == 4 and body["error"]["code"] == -32001, body
    assert "upstream u0 refused the credential the gateway sends it (HTTP 401)" in body["error"]["data"]["reason"]
    assert "needs renewing by an operator" in body["error"]["data"]["reason"], body
