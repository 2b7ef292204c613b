"""Tasks (MCP 2025-11-25, SEP-1686): a tool call answered with a task is followed up by
`tasks/get`, `tasks/result` and `tasks/cancel`, which name only the task. The gateway follows
the task back to the tool that made it, so the policy decides the follow-ups, and the record
holds them, as that tool's — a result fetched through `tasks/result` is not a way around a rule
about the tool. Against the reference server (`server-everything`, its task-based
`simulate-research-query`)."""

import json
import re
import sys

import duckdb
import httpx

from conftest import HERE, spool_events
from test_analyzer import analyzer, sql

sys.path.insert(0, str(HERE.parents[2] / "loadtest"))
from analyzer_bench import duck_sql  # noqa: E402  (the same DataFusion → DuckDB spelling the benchmark uses)

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
TOOL = "simulate-research-query"


def session(c, url):
    r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                          "params": {"protocolVersion": "2025-11-25", "capabilities": {"tasks": {}}, "clientInfo": {"name": "t", "version": "1"}}})
    sid = r.headers["mcp-session-id"]
    assert "tasks" in out[0]["result"]["capabilities"], out
    rpc(c, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    return sid


def research_task(c, url, sid) -> str:
    """Start the research tool as a task (request id 2); its task id."""
    r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": TOOL, "arguments": {"topic": "gateways"}, "task": {"ttl": 60000}}}, sid)
    return out[-1]["result"]["task"]["taskId"]


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
        sid = session(c, url)
        task = research_task(c, url, sid)
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


def test_a_task_s_result_is_the_call_s_answer_in_the_record_and_the_archive(everything, gateway, tmp_path):
    """Each message of a task carries its id in the record; the analyzer's `tool_calls` pairs
    the call with the result `tasks/result` fetched — not with the `CreateTaskResult` — in
    DataFusion and, from the same view SQL, in DuckDB; `replay` names the task."""
    g = gateway([{"path": "/mcp", "upstream": everything}])
    url = g.url()
    with httpx.Client(timeout=30) as c:
        sid = session(c, url)
        task = research_task(c, url, sid)
        r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 3, "method": "tasks/result", "params": {"taskId": task}}, sid)
        report = out[-1]["result"]["content"][0]["text"]
        assert "Research Report: gateways" in report, out
        r, out = rpc(c, url, {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}}, sid)
        assert "hi" in out[-1]["result"]["content"][0]["text"], out
    g.proc.stop()
    events = spool_events(g.spool)
    tasks = {(e["kind"], e.get("method"), e.get("rpc_id")): e.get("task") for e in events if e["kind"] in ("request", "response")}
    for key in [("response", "tools/call", "2"), ("request", "tasks/result", "3"), ("response", "tasks/result", "3")]:
        assert tasks.get(key) == task, (key, tasks)
    assert tasks[("request", "tools/call", "2")] is None and tasks[("response", "tools/call", "4")] is None

    archive = tmp_path / "archive"
    analyzer(archive, "ingest", "--spool", str(g.spool))
    q = "SELECT rpc_id, tool, task, latency_us, result FROM tool_calls ORDER BY ts"
    calls = sql(archive, q)
    assert [(c["rpc_id"], c["tool"], c.get("task")) for c in calls] == [("2", TOOL, task), ("4", "echo", None)], calls
    research = calls[0]
    assert "Research Report: gateways" in research["result"] and "task" not in json.loads(research["result"]), research
    # Four stages of a second each ran between the call and its result.
    assert 3_500_000 <= research["latency_us"] < 60_000_000, research

    con = duckdb.connect()
    files = str(archive / "events" / "**" / "*.parquet")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{files}', hive_partitioning = true, hive_types_autocast = false)")
    for name, view in json.loads(analyzer(archive, "views").stdout).items():
        con.execute(f"CREATE VIEW {name} AS {duck_sql(view)}")
    duck = con.execute(duck_sql(q)).fetchall()
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in duck] == [(c["rpc_id"], c["tool"], c.get("task"), c["latency_us"], c["result"]) for c in calls]

    sid_gw = next(e["session"] for e in events if e.get("session"))
    text = analyzer(archive, "replay", sid_gw).stdout
    assert re.search(rf"← answer #3 {TOOL} \(task {re.escape(task)}\)", text), text[-3000:]


def test_a_task_id_holding_personal_data_is_not_recorded(gateway, raw_upstream):
    """A server is free to choose its task ids; one that builds them from what it was asked (an
    address) would have that in every record of the task. Detection masks it in the answer,
    and the record names the task `[REDACTED]`, never the address."""
    leaky = "task-for-carol.smith@example.com"

    def handler(conn, head, body):
        msg = json.loads(body)
        out = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"task": {"taskId": leaky, "status": "working", "ttl": 60000}}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "lookup", "arguments": {"who": "carol"}, "task": {"ttl": 60000}}}
    r = httpx.post(g.url(), json=call, headers=ACCEPT, timeout=10)
    assert r.status_code == 200, r.text
    assert "carol.smith@example.com" not in r.text, r.text
    g.proc.stop()
    events = spool_events(g.spool)
    answer = next(e for e in events if e["kind"] == "response" and e.get("rpc_id") == "7")
    assert answer["task"] == "[REDACTED]", answer
    assert "carol.smith@example.com" not in json.dumps(events)
