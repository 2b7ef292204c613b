"""MCP 2026-07-28 through the gateway, with the official Python SDK 2.x on both ends (client and
server in their own virtualenv): stateless requests (no initialize, no session id), the
standard headers that repeat the body (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`), and
multi-round-trip requests (a server asks the agent for sampling or elicitation inside its
answer)."""

import base64
import hashlib
import json
import subprocess
import time

import httpx

from conftest import ANALYZER, HERE, PY2026, SLUICE, run_client, spool_events

KEYS = {"agent-a": "sk-agent-a-5c1e0b", "agent-b": "sk-agent-b-91d4aa"}
IDENTITY = "[identity]\n" + "".join(f'[[identity.api_key]]\nsubject = "{s}"\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n' for s, k in KEYS.items())
V2026 = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V2026, "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}}


def client(url, scenario, *args, key=None) -> dict:
    return run_client([PY2026, str(HERE / "clients" / "py2026_client.py"), url, scenario, *args, *(["--key", key] if key else [])])


def events_when(g, ready, timeout=10.0) -> list:
    """The gateway's spooled events once `ready(events)` holds (the spool commits every 10 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        evs = spool_events(g.spool)
        if ready(evs) or time.monotonic() > deadline:
            return evs
        time.sleep(0.1)


def b64(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def test_a_2026_client_and_server_through_the_gateway(py2026, gateway, tmp_path):
    """The SDK client discovers, lists and calls tools through the gateway with no session.
    An argument the gateway masks is masked in its `Mcp-Param-To` header too: the server
    compares the two and answers what it received — before, the header (base64, as the SDK
    sends non-ASCII values) went on as sent and the server refused the call as a mismatch. Each
    caller's stateless requests are one session in the record (its `session`, no upstream
    session id), so audits and chain rules can follow them."""
    g = gateway([{"path": "/mcp", "upstream": py2026}], extra=IDENTITY + '[detect.request]\npii = "mask"\n')
    to = "Jöhn <john.smith@example.org>"
    a = client(g.url(), "session", to, key=KEYS["agent-a"])
    assert "error" not in a, a
    assert a["tools"] == ["add", "deploy", "lookup", "rug_pull", "send"] and a["add"] == {"result": 5}, a
    assert "Customer c-7" in a["lookup"]["text"] and "jane.doe@example.com" not in a["lookup"]["text"] and "4111 1111 1111 1111" not in a["lookup"]["text"], a
    sent = a["send"]
    assert not sent["is_error"] and sent["text"].startswith("sent to Jöhn <") and "john.smith@example.org" not in sent["text"], sent
    b = client(g.url(), "session", "ops@example.org", key=KEYS["agent-b"])
    assert "error" not in b and not b["send"]["is_error"] and "ops@example.org" not in b["send"]["text"], b
    # A second client process of the same caller: same session, and the same JSON-RPC ids again.
    a2 = client(g.url(), "session", "Zoë <zoe@example.org>", key=KEYS["agent-a"])
    assert "error" not in a2 and a2["send"]["text"].startswith("sent to Zoë <"), a2

    evs = events_when(g, lambda evs: sum(e["kind"] == "response" and e.get("tool") == "send" for e in evs) >= 3)
    by_caller = {}
    for e in evs:
        if e.get("identity"):
            by_caller.setdefault(e["identity"]["subject"], set()).add(e.get("session"))
    assert set(by_caller) == {"agent-a", "agent-b"}, by_caller
    assert all(len(s) == 1 and None not in s for s in by_caller.values()), by_caller
    assert by_caller["agent-a"] != by_caller["agent-b"], by_caller
    starts = [e for e in evs if e["kind"] == "session_start"]
    assert sorted(e["session"] for e in starts) == sorted(s for v in by_caller.values() for s in v), starts
    assert not any(e.get("mcp_session") for e in evs), "no upstream session exists to name"
    paths = [f["path"] for e in evs if e["kind"] == "findings" and e.get("direction") == "request" for f in e["findings"]]
    assert "/arguments/to" in paths and not any(p.startswith("/headers/") for p in paths), paths
    # In the archive each call is paired with its own answer, though ids repeat in the session.
    archive = tmp_path / "archive"
    r = subprocess.run([str(ANALYZER), "--archive", str(archive), "ingest", "--spool", str(g.spool)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    q = "SELECT subject, tool, rpc_id, arguments, result FROM tool_calls ORDER BY ts"
    r = subprocess.run([str(ANALYZER), "--archive", str(archive), "sql", q, "--format", "json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    calls = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    mine = [c for c in calls if c["subject"] == "agent-a"]
    assert [c["tool"] for c in mine] == ["add", "lookup", "send"] * 2, calls
    assert len({c["rpc_id"] for c in mine if c["tool"] == "send"}) == 1, "the second process reused the ids"
    sends = [(json.loads(c["arguments"])["arguments"]["to"], json.loads(c["result"])["content"][0]["text"]) for c in mine if c["tool"] == "send"]
    assert len(sends) == 2 and all(answer.startswith(f"sent to {to} in eu") for to, answer in sends), sends
    sessions = g.get_admin("/sessions")["sessions"]
    assert sorted((s["owner"], s["stateless"], s["protocol_version"], s["mcp_session_id"]) for s in sessions) == [("agent-a", True, V2026, ""), ("agent-b", True, V2026, "")], sessions
    assert {s["client_info"]["name"] for s in sessions} == {"mcp"}, sessions


def test_standard_headers_must_repeat_the_body_and_follow_its_masking(gateway, raw_upstream):
    """Something behind the gateway may route on `Mcp-Method`/`Mcp-Name`/`Mcp-Param-*`
    without reading the body the gateway decided on, so a header that says otherwise is refused
    with MCP's -32020 (by id, nothing forwarded); a matching request goes on with its headers
    written again from the masked body."""

    def answer(conn, head, body):
        # A GET (no body) is answered like a call: the test looks at what reached the upstream.
        out = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"] if body else None, "result": {"content": [], "resultType": "complete"}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    up = raw_upstream(answer)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra='[detect.request]\npii = "mask"\n')
    call = {"jsonrpc": "2.0", "id": "c-1", "method": "tools/call", "params": {"name": "send", "arguments": {"to": "Zoë <zoe.adams@example.org>", "body": "hi", "opts": {"region": "eu"}}, "_meta": META}}
    base = {"accept": "application/json, text/event-stream", "content-type": "application/json", "mcp-protocol-version": V2026, "mcp-method": "tools/call", "mcp-name": "send"}
    with httpx.Client(timeout=10) as c:
        for extra, why in [
            ({"mcp-name": "delete_all"}, "Mcp-Name header does not match"),
            ({"mcp-method": "tools/list"}, "Mcp-Method header does not match"),
            ({"mcp-param-to": "eve@example.net"}, "Mcp-Param-to header does not match any argument"),
            ({"mcp-param-to": "=?base64?not base64?="}, "not canonical base64"),
            ({"mcp-protocol-version": "2025-11-25"}, "differ"),
        ]:
            r = c.post(g.url(), json=call, headers={**base, **extra})
            assert r.status_code == 400, (extra, r.status_code, r.text)
            err = r.json()
            assert err["id"] == "c-1" and err["error"]["code"] == -32020 and why in err["error"]["data"]["reason"], (extra, err)
            assert "eve@example.net" not in r.text
        dup = [(k, v) for k, v in base.items()] + [("Mcp-Method", "tools/call")]
        r = c.post(g.url(), content=json.dumps(call), headers=dup)
        assert r.status_code == 400 and "more than once" in r.json()["error"]["data"]["reason"], r.text
        assert up.requests == [], "nothing refused was forwarded"

        r = c.post(g.url(), json=call, headers={**base, "mcp-param-to": b64("Zoë <zoe.adams@example.org>"), "mcp-param-region": "eu"})
        assert r.status_code == 200 and r.json()["result"]["resultType"] == "complete", r.text
        # On a request with no body to repeat (a GET), they are headers like any other: inspected.
        c.get(g.url(), headers={"accept": "text/event-stream", "mcp-param-note": "AKIAQYLPMN5HFIQR7XQB"})
    sent, *others = up.requests
    assert others and not any(b"AKIAQYLPMN5HFIQR7XQB" in r for r in others), others
    head, _, body = sent.partition(b"\r\n\r\n")
    assert b"zoe.adams@example.org" not in sent, sent
    forwarded_to = json.loads(body)["params"]["arguments"]["to"]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in head.split(b"\r\n")[1:])}
    assert forwarded_to.startswith("Zoë <") and forwarded_to != "Zoë <zoe.adams@example.org>", forwarded_to
    assert headers["mcp-param-to"] == b64(forwarded_to), (headers, forwarded_to)
    assert (headers["mcp-param-region"], headers["mcp-name"], headers["mcp-method"]) == ("eu", "send", "tools/call"), headers


POLICY = """
default = "allow"

[[rule]]
id = "no-sampling"
from = "server"
when = 'method == "sampling/createMessage"'
action = "deny"
reason = "servers may not use the agent's model"

[[rule]]
id = "elicitation-urls"
from = "server"
when = 'method == "elicitation/create" && has(args.url) && !args.url.startsWith("https://login.example.com/")'
action = "deny"
reason = "the server asked to send the user to a page outside login.example.com"
"""


def test_input_requests_inside_answers_are_decided_by_server_rules(py2026, gateway, tmp_path):
    """MCP 2026-07-28 servers no longer send the agent requests of their own: a tool answers
    `input_required` with the sampling or elicitation it needs, and the client calls again with
    the answers. The `from = "server"` rules decide those as they decided requests sent on
    their own; before, they passed unseen. A refused one withholds the answer, and the agent's
    call fails with the policy's reason; one allowed completes the round trip."""
    (tmp_path / "policy.toml").write_text(POLICY)
    g = gateway([{"path": "/mcp", "upstream": py2026}], extra=IDENTITY + f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    ok = client(g.url(), "deploy", "https://login.example.com/sso", key=KEYS["agent-a"])
    assert ok.get("deploy") == {"text": "deployed prod after https://login.example.com/sso", "is_error": False}, ok
    for ask, reason in [("sampling", "servers may not use the agent's model"), ("https://login.examp1e.net/sso", "outside login.example.com")]:
        out = client(g.url(), "deploy", ask, key=KEYS["agent-a"])
        assert "deploy" not in out and reason in out.get("error", ""), out
    evs = events_when(g, lambda evs: sum(e["kind"] == "decision" and e["decision"]["action"] == "deny" for e in evs) >= 2)
    denied = [e for e in evs if e["kind"] == "decision" and e["decision"]["action"] == "deny"]
    assert sorted((e["method"], e["direction"], e["tool"], e["decision"]["rule"]) for e in denied) == [
        ("elicitation/create", "response", "deploy", "elicitation-urls"),
        ("sampling/createMessage", "response", "deploy", "no-sampling"),
    ], denied
    assert g.metric("sluice_policy_decisions_total", direction="response", action="deny") == 2
    # The server's sealed `requestState` went back to the client whole (the allowed call
    # completed), unscanned: the record keeps a placeholder, never the token.
    asked = [e["payload"] for e in evs if e["kind"] == "response" and isinstance(e.get("payload"), dict) and e["payload"].get("resultType") == "input_required"]
    assert len(asked) == 3 and all(p["requestState"] == "[OPAQUE]" for p in asked), asked
    assert not any("deploy:prod" in json.dumps(e.get("payload")) for e in evs if e["kind"] == "response"), "the token is not in any recorded answer"


def test_a_2026_local_server_over_stdio(tmp_path):
    """`sluice stdio` in front of a 2026-07-28 server the SDK 2.x client launches: discovery,
    calls, masking, and input requests decided by `from = "server"` rules work as over HTTP
    (one process is one session, as before), and every answer names its call."""
    (tmp_path / "policy.toml").write_text(POLICY)
    cfg = tmp_path / "stdio.toml"
    cfg.write_text(f'[gateway]\nshutdown_grace = "3s"\n[recording.spool]\ndir = "{tmp_path / "spool"}"\n[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    server = f"{PY2026} {HERE / 'servers' / 'py2026_server.py'} stdio"
    through = f"stdio:{SLUICE} stdio --config {cfg} --name local -- {server}"
    out = client(through, "session", "ann@example.org")
    assert "error" not in out and out["add"] == {"result": 5} and "jane.doe@example.com" not in out["lookup"]["text"], out
    denied = client(through, "deploy", "sampling")
    assert "servers may not use the agent's model" in denied.get("error", ""), denied
    evs = spool_events(tmp_path / "spool")
    starts = [e for e in evs if e["kind"] == "session_start"]
    assert len(starts) == 2, starts
    requests = {e["id"]: e for e in evs if e["kind"] == "request"}
    answers = [e for e in evs if e["kind"] == "response"]
    assert answers and all(requests[a["call"]]["rpc_id"] == a["rpc_id"] and requests[a["call"]]["session"] == a["session"] for a in answers), answers
    decided = [(e["method"], e["tool"], e["decision"]["rule"]) for e in evs if e["kind"] == "decision" and e["decision"]["action"] == "deny"]
    assert decided == [("sampling/createMessage", "deploy", "no-sampling")], decided


def test_a_2026_call_held_for_approval_goes_through_once_approved(py2026, gateway, tmp_path):
    """A human approval holds a stateless call (the SDK 2.x client keeps its request open) and
    releases it to the upstream once a reviewer approves it; the approval names the caller's
    session of the gateway's."""
    keys = {"agent-a": ("sk-agent-a-5c1e0b", "support"), "rev": ("sk-rev-77c1", "finance")}
    ident = "[identity]\n" + "".join(f'[[identity.api_key]]\nsubject = "{s}"\ngroups = ["{grp}"]\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n' for s, (k, grp) in keys.items())
    (tmp_path / "policy.toml").write_text("default = \"allow\"\n[[rule]]\nid = \"big-sums\"\nwhen = 'tool.name == \"add\" && args.a > 100'\n"
                                          "action = \"require_approval\"\napprovers = [\"finance\"]\ntimeout = \"60s\"\n")
    g = gateway([{"path": "/mcp", "upstream": py2026}], extra=ident + f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    script = tmp_path / "big_sum.py"
    script.write_text(
        "import asyncio, json, sys, httpx2\nfrom mcp import Client\nfrom mcp.client.streamable_http import streamable_http_client\n"
        "async def main():\n"
        "    async with httpx2.AsyncClient(headers={'x-api-key': sys.argv[2]}, timeout=60) as http:\n"
        "        async with Client(streamable_http_client(sys.argv[1], http_client=http)) as c:\n"
        "            r = await c.call_tool('add', {'a': 500, 'b': 1})\n"
        "            print(json.dumps(r.structured_content))\n"
        "asyncio.run(main())\n")
    p = subprocess.Popen([PY2026, str(script), g.url(), keys["agent-a"][0]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rev = {"x-api-key": keys["rev"][0]}
    deadline, held = time.monotonic() + 20, []
    while not held and time.monotonic() < deadline:
        held = [a for a in httpx.get(g.admin("/approvals"), headers=rev).json()["approvals"] if a["tool"] == "add"]
        time.sleep(0.2)
    assert held and held[0]["subject"] == "agent-a" and held[0]["arguments"] == {"a": 500, "b": 1}, held
    assert p.poll() is None, "the call waits"
    sessions = [s for s in g.get_admin("/sessions")["sessions"] if s["owner"] == "agent-a"]
    assert [s["gateway_id"] for s in sessions] == [held[0]["session"]], (sessions, held)
    r = httpx.post(g.admin(f"/approvals/{held[0]['id']}/approve"), headers=rev, json={})
    assert r.status_code == 200, r.text
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and json.loads(out.strip().splitlines()[-1]) == {"result": 501}, err[-2000:]


def test_a_rug_pull_announced_on_a_listen_stream_is_caught(py2026, gateway, tmp_path):
    """MCP 2026-07-28 has no standing GET stream: a client that wants change notices sends
    `subscriptions/listen`, whose answer is a long-lived event stream. Through the gateway the
    SDK's listener gets its acknowledgement and a `tools/list_changed` event while its calls go
    on beside it; when the change is a rug pull (a pinned tool's description rewritten), the
    tool listing it triggers hides the tool and calls to it are refused, as in a 2025 session,
    and the stream's frames are in the record."""
    g = gateway([{"path": "/mcp", "upstream": py2026, "name": "tools2026"}], extra=IDENTITY + f'[pins]\nfile = "{tmp_path / "pins.json"}"\n')
    out = client(g.url(), "listen", key=KEYS["agent-a"])
    assert "error" not in out, out
    assert out["honored"] and out["rug_pull"] == {"text": "done", "is_error": False} and out["event"] == "ToolsListChanged", out
    assert out["before"]["add"] == "Add two integers.", out
    assert "add" not in out["after"] and "rug_pull" in out["after"], out
    assert "-32013" in out["add"].get("error", "") or "changed" in out["add"].get("error", ""), out
    evs = events_when(g, lambda evs: any(e["kind"] == "pin_change" for e in evs))
    assert [(e["pin"]["change"], e["pin"]["tool"]) for e in evs if e["kind"] == "pin_change"] == [("changed", "add")], evs
    listen = [e for e in evs if e["kind"] == "request" and e.get("method") == "subscriptions/listen"]
    assert len(listen) == 1 and listen[0]["identity"]["subject"] == "agent-a", listen
    frames = [e for e in evs if e["kind"] == "notification" and e.get("direction") == "response"]
    assert "notifications/tools/list_changed" in [e["method"] for e in frames], frames
    assert all(e["session"] == listen[0]["session"] for e in frames), frames


def test_a_quiet_listen_stream_keeps_its_session(py2026, gateway, tmp_path):
    """A `subscriptions/listen` stream may carry nothing for hours. While it is open its
    session is not idle (before, `sessions.idle_timeout` ended the session under the open
    stream, and its later events were recorded after the session's end); once it closes, the
    idle timer runs again and ends the session."""
    g = gateway([{"path": "/mcp", "upstream": py2026}], extra=IDENTITY + '[sessions]\nidle_timeout = "1s"\n')
    script = tmp_path / "listen.py"
    script.write_text(
        "import asyncio, sys, httpx2\nfrom mcp import Client\nfrom mcp.client.streamable_http import streamable_http_client\n"
        "async def main():\n"
        "    async with httpx2.AsyncClient(headers={'x-api-key': sys.argv[2]}, timeout=60) as http:\n"
        "        async with Client(streamable_http_client(sys.argv[1], http_client=http)) as c:\n"
        "            async with c.listen(tools_list_changed=True):\n"
        "                print('listening', flush=True)\n"
        "                sys.stdin.readline()\n"
        "asyncio.run(main())\n")
    p = subprocess.Popen([PY2026, str(script), g.url(), KEYS["agent-a"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "listening", p.stderr.read()[-2000:]
        time.sleep(3.5)  # three sweeps past the idle timeout, nothing on the stream
        mine = [s for s in g.get_admin("/sessions")["sessions"] if s["owner"] == "agent-a"]
        assert len(mine) == 1 and mine[0]["stateless"], mine
        assert not any(e["kind"] == "session_end" for e in spool_events(g.spool)), "ended under an open stream"
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0, p.stderr.read()[-2000:]
    finally:
        p.kill()
    evs = events_when(g, lambda evs: any(e["kind"] == "session_end" for e in evs), timeout=10)
    ends = [e for e in evs if e["kind"] == "session_end"]
    assert [e["session"] for e in ends] == [mine[0]["gateway_id"]], ends
    assert not any(s["owner"] == "agent-a" for s in g.get_admin("/sessions")["sessions"])
