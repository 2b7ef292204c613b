"""Tasks (MCP 2025-11-25, SEP-1686): a tool call answered with a task is followed up by
`tasks/get`, `tasks/result` and `tasks/cancel`, which name only the task. The gateway follows
the task back to the tool that made it, so the policy decides the follow-ups, and the record
holds them, as that tool's — a result fetched through `tasks/result` is not a way around a rule
about the tool. Against the reference server (`server-everything`, its task-based
`simulate-research-query`)."""

import json

import httpx

from conftest import spool_events

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
TOOL = "simulate-research-query"


def rpc(c, url, msg, sid=None):
    h = dict(ACCEPT)
    if sid:
        h.update({"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
    r = c.post(url, json=msg, headers=h)
    out = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    if not out and r.text.strip().startswith("{"):
        out = [r.json()]
    return r, out


def test_task_follow_ups_are_decided_and_recorded_as_the_tool_that_made_the_task(everything, gateway, tmp_path):
    (tmp_path / "policy.toml").write_text(
        'default = "allow"\n'
        '[[rule]]\nid = "research-results-stay-inside"\n'
        f"when = 'method == \"tasks/result\" && tool.name == \"{TOOL}\"'\n"
        'action = "deny"\nreason = "research results are reviewed before release"\n')
    g = gateway([{"path": "/mcp", "upstream": everything}], extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    url = g.url()
    with httpx.Client(timeout=20) as c:
        r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                              "params": {"protocolVersion": "2025-11-25", "capabilities": {"tasks": {}}, "clientInfo": {"name": "t", "version": "1"}}})
        sid = r.headers["mcp-session-id"]
        assert "tasks" in out[0]["result"]["capabilities"], out
        rpc(c, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                              "params": {"name": TOOL, "arguments": {"topic": "gateways"}, "task": {"ttl": 60000}}}, sid)
        task = out[-1]["result"]["task"]["taskId"]
        r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 3, "method": "tasks/get", "params": {"taskId": task}}, sid)
        assert out[-1]["result"]["taskId"] == task, "tasks/get is allowed"
        r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 4, "method": "tasks/result", "params": {"taskId": task}}, sid)
        err = out[-1]["error"]
        assert err["code"] == -32009 and "research results are reviewed" in err["data"]["reason"], out
        # A task id the session never got from a call is no one's: decided on its method alone.
        r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 5, "method": "tasks/result", "params": {"taskId": "not-a-task"}}, sid)
        assert "error" in out[-1] and out[-1]["error"]["code"] != -32009, out
    g.proc.stop()
    events = spool_events(g.spool)
    seen = {(e["kind"], e.get("method"), e.get("rpc_id")): e.get("tool") for e in events if e["kind"] in ("request", "response", "decision")}
    for key in [("request", "tasks/get", "3"), ("response", "tasks/get", "3"), ("request", "tasks/result", "4"), ("decision", "tasks/result", "4")]:
        assert seen.get(key) == TOOL, (key, seen.get(key), sorted(k for k in seen if k[1] and k[1].startswith("tasks/")))
    assert seen.get(("request", "tasks/result", "5")) is None
