"""The access log (`gateway.access_log = true`): one `sluice::access` line per HTTP exchange —
a call that passed, one the detection refused, a plain HTTP request, a request no route takes —
saying who, what and how it ended, and never what detection found in it."""

import json
import re

import httpx

from test_faults import ACCEPT

FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def access_lines(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if "sluice::access" not in line:
            continue
        fields = {}
        for k, v in FIELD.findall(line.split("sluice::access:", 1)[1]):
            fields[k] = json.loads(v) if v.startswith('"') else v
        out.append(fields)
    return out


def test_one_line_per_exchange_without_what_was_found(gateway, raw_upstream):
    def handler(conn, head, body):
        if head.startswith(b"POST"):
            out = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {"content": [{"type": "text", "text": "ok"}]}}).encode()
        else:
            out = b'{"users": []}'
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url("/mcp")}, {"path": "/api", "kind": "http", "upstream": up.url("/api")}],
                gateway_keys="access_log = true\n")
    with httpx.Client(timeout=10) as c:
        r = c.post(g.url(), json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "lookup", "arguments": {"q": "weather"}}}, headers=ACCEPT)
        assert r.status_code == 200, r.text
        # A secret in the tool's name: refused, and the name is not logged.
        key = "AKIAQYLPMN5HFIQR7XQB"
        r = c.post(g.url(), json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": key, "arguments": {}}}, headers=ACCEPT)
        assert "error" in r.json(), r.text
        # A plain HTTP route with an address in the query: logged as the record keeps it, masked.
        r = c.get(g.url("/api/users?email=carol.smith@example.com"))
        assert r.status_code == 200, r.text
        r = c.get(g.url("/nowhere/carol.smith@example.com"))
        assert r.status_code == 404
    g.proc.stop()
    log = g.proc.log.read_text()
    lines = access_lines(log)
    assert len(lines) == 4, lines
    call, refused, plain, lost = lines
    assert (call["method"], call["path"], call["status"], call["rpc"], call["tool"], call["calls"]) == ("POST", "/mcp", "200", "tools/call", "lookup", "1"), call
    assert call["route"] == "r0" and call["upstream"] == "u0" and call["subject"] == "-" and int(call["us"]) > 0 and call["client"].startswith("127.0.0.1:")
    assert (refused["tool"], refused["rpc"], refused["findings"]) == ("[REDACTED]", "tools/call", "1"), refused
    assert plain["route"] == "r1" and plain["method"] == "GET" and plain["path"].startswith("/api/users?email=") and plain["status"] == "200", plain
    assert "carol.smith@example.com" not in plain["path"] and int(plain["findings"]) >= 1, plain
    assert (lost["route"], lost["status"], lost["reason"]) == ("-", "404", "no route matches the request path"), lost
    access = "\n".join(l for l in log.splitlines() if "sluice::access" in l)
    assert key not in access and "carol.smith" not in access, access


def test_json_lines_carry_numbers_as_numbers(raw_upstream, tmp_path):
    """With `--log-format json` each access line is one JSON object whose status, duration and
    counts are numbers (a log pipeline can sum and compare them without parsing strings)."""
    import signal
    import subprocess
    import time
    from conftest import SLUICE, free_port, wait_ready_at
    from test_faults import echo_id
    up = raw_upstream(echo_id)
    port, admin = free_port(), free_port()
    cfg = tmp_path / "sluice.toml"
    cfg.write_text(f'[gateway]\nworkers = 1\naccess_log = true\n[[listener]]\naddress = "127.0.0.1:{port}"\n[admin]\naddress = "127.0.0.1:{admin}"\n'
                   f'[recording.spool]\ndir = "{tmp_path / "spool"}"\n[[upstream]]\nname = "u"\nurl = "{up.url()}"\n[[route]]\nname = "mcp"\npath = "/mcp"\nupstream = "u"\n')
    log = tmp_path / "sluice.log"
    with open(log, "wb") as err:
        p = subprocess.Popen([str(SLUICE), "--log-format", "json", "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_ready_at(admin)
            r = httpx.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "lookup", "arguments": {}}}, headers=ACCEPT, timeout=10)
            assert r.status_code == 200, r.text
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=20) == 0
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.startswith("{")]
    access = [l["fields"] for l in lines if l.get("target") == "sluice::access"]
    assert len(access) == 1, lines
    a = access[0]
    assert (a["status"], a["rpc"], a["tool"], a["calls"], a["route"]) == (200, "tools/call", "lookup", 1, "mcp"), a
    assert isinstance(a["us"], int) and a["us"] > 0 and isinstance(a["findings"], int), a
