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
