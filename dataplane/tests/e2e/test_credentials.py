"""Credential injection: the upstream receives the gateway's credential for it and never the
agent's; the credential never comes back to the agent, nor into the record or the log."""

import json
import time

import httpx

from conftest import spool_events

SECRET = "ghs_UpstreamOnly0123456789abcdefXYZ"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def test_upstream_gets_the_injected_credential_and_never_the_agents(gateway, raw_upstream, tmp_path):
    def handler(conn, head, body):
        # A careless upstream that echoes what it was sent.
        auth = next((l.split(b":", 1)[1].strip().decode() for l in head.split(b"\r\n") if l.lower().startswith(b"authorization:")), "")
        out = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {"content": [{"type": "text", "text": f"you sent {auth}"}]}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(handler)
    (tmp_path / "upstream.token").write_text(SECRET + "\n")
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    # The fixture writes one upstream per route; add the credential to it and reload.
    cfg = g.config.read_text().replace('[[upstream]]\nname = "u0"\n', f'[[upstream]]\nname = "u0"\ncredential = {{ kind = "bearer", file = "{tmp_path / "upstream.token"}" }}\n')
    g.config.write_text(cfg)
    g.proc.p.send_signal(1)
    for _ in range(100):
        if g.metric("sluice_config_reloads_total") >= 1:
            break
        time.sleep(0.2)
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    r = httpx.post(g.url(), json=call, headers={**ACCEPT, "authorization": "Bearer agent-own-token-123", "x-api-key": "agent-key"}, timeout=10)
    assert r.status_code == 200, r.text
    sent = up.requests[-1].decode()
    headers = sent.split("\r\n\r\n")[0].lower()
    assert f"authorization: bearer {SECRET}".lower() in headers
    assert "agent-own-token-123" not in sent and "agent-key" not in sent
    text = r.json()["result"]["content"][0]["text"]
    assert SECRET not in r.text and "[REDACTED:upstream-credential]" in text, text
    g.proc.stop()
    assert SECRET not in json.dumps(spool_events(g.spool))
    assert SECRET not in g.proc.log.read_text()
