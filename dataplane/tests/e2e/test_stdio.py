"""The stdio transport: an MCP client launches `sluice stdio -- SERVER…` in the server's place.
Driven by the official TypeScript and Python SDK clients (their stdio transports) against the
official `server-everything` and a Python-SDK server, both started by sluice as its child; the
caller is the operating-system user, and everything is recorded in the spool."""

import asyncio
import getpass
import grp
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError

from conftest import HERE, LOG_ONLY, NODE, PY, SLUICE, spool_events, ts_client

EVERYTHING = [NODE, str(HERE / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"), "stdio"]
PY_SERVER = [PY, str(HERE / "servers" / "py_server.py"), "0", "stdio"]
USER = getpass.getuser()
GROUP = grp.getgrgid(os.getgid()).gr_name


def stdio_config(tmp: Path, extra: str = "") -> Path:
    cfg = tmp / "stdio.toml"
    cfg.write_text(f'[gateway]\nshutdown_grace = "3s"\n[recording.spool]\ndir = "{tmp / "spool"}"\n{extra}')
    return cfg


def through(cfg: Path, server: list, name: str = "stdio") -> list:
    return [str(SLUICE), "stdio", "--config", str(cfg), "--name", name, "--", *server]


def test_typescript_client_same_results_direct_and_through_stdio(tmp_path):
    cfg = stdio_config(tmp_path, LOG_ONLY)
    direct = ts_client(json.dumps(EVERYTHING), "--stdio")
    via = ts_client(json.dumps(through(cfg, EVERYTHING, name="everything")), "--stdio")
    steps = [[1, 4], [2, 4], [3, 4], [4, 4]]
    # Progress may still be in flight when the call's result arrives (both ways).
    for out in (direct, via):
        assert out["progress"] and steps[: len(out["progress"])] == out["progress"]
        assert "sampled: " in json.dumps(out["sampling"])
    assert {k: v for k, v in via.items() if k != "progress"} == {k: v for k, v in direct.items() if k != "progress"}

    events = spool_events(tmp_path / "spool")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "gateway_start" and kinds[1] == "session_start", kinds[:3]
    assert kinds[-2:] == ["session_end", "gateway_stop"], kinds[-3:]
    session = events[1]["session"]
    per_session = [e for e in events if e.get("session")]
    assert {e["session"] for e in per_session} == {session}, "one process, one session"
    # The caller is the operating-system user; the server goes by its --name.
    for e in per_session:
        assert e["identity"]["subject"] == USER and e["identity"]["via"] == "os_user", e
        assert GROUP in e["identity"]["groups"]
        assert e["route"] == "everything" and e["upstream"] == "node"
    calls = [e["tool"] for e in events if e["kind"] == "request" and e.get("method") == "tools/call"]
    assert calls == ["echo", "get-sum", "get-structured-content", "get-tiny-image", "trigger-long-running-operation",
                     "trigger-sampling-request", "trigger-elicitation-request"]
    # Both directions, paired: every call has its answer, and the server's own requests
    # (sampling, elicitation) were seen going to the client and their answers coming back.
    answered = [e["tool"] for e in events if e["kind"] == "response" and e.get("method") == "tools/call"]
    assert sorted(answered) == sorted(calls)
    asked = [e["method"] for e in events if e["kind"] == "request" and e["direction"] == "response"]
    assert "sampling/createMessage" in asked and "elicitation/create" in asked
    assert "the client closed its input; the server exited with status 0" in events[-2]["gateway"]["detail"]
    # The e-mail the client typed into the elicitation form was found (logged) on its way back.
    found = [f["kind"] for e in events if e["kind"] == "findings" for f in e["findings"]]
    assert "email" in found


POLICY = """
default = "allow"

[[rule]]
id = "no-failing"
when = 'tool.name == "fail"'
action = "deny"
reason = "the fail tool is switched off; use another tool"

[[rule]]
id = "count-for-ops"
when = 'tool.name == "count" && !("ops-no-such-group" in identity.groups)'
action = "deny"
reason = "count is for the ops group"

[[rule]]
id = "shout-for-me"
when = 'tool.name == "shout" && !(identity.sub == "{user}" && "{group}" in identity.groups)'
action = "deny"
"""


async def sampling(ctx, params: types.CreateMessageRequestParams):
    return types.CreateMessageResult(role="assistant", model="e2e", content=types.TextContent(type="text", text="short"))


async def elicitation(ctx, params):
    return types.ElicitResult(action="accept", content={"name": "Ada"})


def py_session(cmd: list, script):
    async def run():
        params = StdioServerParameters(command=cmd[0], args=cmd[1:])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, sampling_callback=sampling, elicitation_callback=elicitation) as s:
                await s.initialize()
                return await script(s)
    return asyncio.run(asyncio.wait_for(run(), 60))


def test_python_client_through_stdio_policy_masking_and_interaction(tmp_path):
    (tmp_path / "policy.toml").write_text(POLICY.replace("{user}", USER).replace("{group}", GROUP))
    cfg = stdio_config(tmp_path, f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')

    async def script(s: ClientSession):
        out = {"tools": sorted(t.name for t in (await s.list_tools()).tools)}
        out["add"] = (await s.call_tool("add", {"a": 2, "b": 40})).content[0].text
        # A secret in a tool's output is masked on its way to the client (default: mask).
        out["shout"] = (await s.call_tool("shout", {"text": "key AKIAZ3MNOPQRSTUV7XYZ here"})).content[0].text
        progress = []

        async def on_progress(p, total, message):
            progress.append(p)
        out["summarize"] = (await s.call_tool("summarize", {"text": "long text"})).content[0].text
        out["ask"] = (await s.call_tool("ask_name", {})).content[0].text
        for tool in ("fail", "count"):
            try:
                r = await s.call_tool(tool, {"reason": "x"} if tool == "fail" else {"n": 2}, progress_callback=on_progress)
                out[tool] = ("answered", r.model_dump(mode="json"))
            except McpError as e:
                out[tool] = ("refused", e.error.code, (e.error.data or {}).get("reason", ""))
        out["progress"] = progress
        return out

    out = py_session(through(cfg, PY_SERVER, name="notes"), script)
    assert out["add"] == "42"
    assert "AKIAZ3MNOPQRSTUV7XYZ" not in out["shout"] and out["shout"].startswith("KEY "), out["shout"]
    assert out["summarize"] == "summary=short", "sampling: the server's request reached the client and its answer came back"
    assert out["ask"] == "accept:Ada", "elicitation round trip"
    # What the caller may not call is hidden and refused.
    assert "fail" not in out["tools"] and "count" not in out["tools"], out["tools"]
    assert {"add", "shout", "summarize", "ask_name"} <= set(out["tools"])
    assert out["fail"][:2] == ("refused", -32009) and "the fail tool is switched off" in out["fail"][2], out["fail"]
    assert out["count"][:2] == ("refused", -32009) and "count is for the ops group" in out["count"][2], out["count"]
    assert out["progress"] == []

    events = spool_events(tmp_path / "spool")
    decisions = {(e["decision"]["rule"], e["decision"]["action"]) for e in events
                 if e["kind"] == "decision" and e["decision"]["stage"] == "policy" and e.get("tool") in ("fail", "count")}
    assert {("no-failing", "deny"), ("count-for-ops", "deny")} <= decisions, decisions
    # The record holds the masked answer only.
    assert "AKIAZ3MNOPQRSTUV7XYZ" not in json.dumps(events)
    assert any(f["kind"] == "aws_access_key_id" for e in events if e["kind"] == "findings" for f in e["findings"])


class Raw:
    """`sluice stdio` driven line by line, as a client that writes whatever it likes."""

    def __init__(self, cmd: list, env=None):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={**os.environ, **(env or {})})
        self.lines: queue.Queue = queue.Queue()
        self.err: list = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, msg):
        data = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        self.p.stdin.write(data + b"\n")
        self.p.stdin.flush()

    def recv(self, timeout=20):
        line = self.lines.get(timeout=timeout)
        assert line is not None, "sluice closed its output:\n" + b"".join(self.err).decode(errors="replace")[-3000:]
        return json.loads(line)

    def until_id(self, want, timeout=20):
        """The answer with id `want` (notifications on the way skipped)."""
        end = time.time() + timeout
        while time.time() < end:
            m = self.recv(timeout=max(0.1, end - time.time()))
            if m.get("id") == want and "method" not in m:
                return m
        raise AssertionError(f"no answer with id {want}")

    def stderr(self) -> str:
        return b"".join(self.err).decode(errors="replace")


def init(raw: Raw):
    raw.send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
    assert raw.until_id(0)["result"]["serverInfo"]["name"] == "sluice-e2e-py"
    raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def test_bad_client_lines_are_answered_and_the_session_goes_on(tmp_path):
    cfg = stdio_config(tmp_path, "[limits]\nmax_body_bytes = 4096\nmax_buffered_bytes = 65536\n")
    raw = Raw(through(cfg, PY_SERVER))
    init(raw)
    raw.send(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"')
    e = raw.recv()
    assert e["id"] is None and e["error"]["code"] == -32700, e
    # The policy would read one name and the server the other: refused.
    raw.send(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","name":"fail","arguments":{"a":1,"b":2}}}')
    e = raw.recv()
    assert e["error"]["code"] == -32600 and "names the same member twice" in e["error"]["data"]["reason"], e
    # Longer than limits.max_body_bytes: skipped to its end, refused, nothing of it forwarded.
    raw.send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                         "params": {"name": "shout", "arguments": {"text": "y" * 10000}}}).encode())
    e = raw.recv()
    assert e["error"]["data"]["reason"].startswith("the body is larger than") or "4096" in json.dumps(e), e
    # Nesting deeper than the gateway reads is refused, not a crash.
    raw.send(b'{"jsonrpc":"2.0","id":4,"method":"ping","params":{"x":' + b"[" * 1000 + b"]" * 1000 + b"}}")
    assert raw.recv()["error"]["code"] == -32600
    # A request id still awaiting its answer is not reused.
    raw.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "count", "arguments": {"n": 1}}})
    raw.send({"jsonrpc": "2.0", "id": 5, "method": "ping"})
    answers = [raw.until_id(5), raw.until_id(5)]
    refused = [a for a in answers if "error" in a]
    assert len(refused) == 1 and "still awaits its answer" in refused[0]["error"]["data"]["reason"], answers
    assert [a for a in answers if "result" in a][0]["result"]["content"][0]["text"] == "counted to 1"
    # Blank lines are nothing; the session still works.
    raw.send(b"   ")
    raw.send({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 20, "b": 22}}})
    assert raw.until_id(6)["result"]["content"][0]["text"] == "42"
    # The client closes its input: the server's input closes, both exit cleanly.
    raw.p.stdin.close()
    assert raw.p.wait(15) == 0, raw.stderr()
    events = spool_events(tmp_path / "spool")
    refusals = [e for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert len(refusals) == 5, [r["decision"] for r in refusals]
    assert "y" * 100 not in json.dumps(events)


BAD_SERVER = r'''
import json, os, sys
def out(m):
    sys.stdout.write(m + "\n"); sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("method") == "initialize":
        out("Server listening on stdio (a log line on the wrong stream)")
        out(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                        "serverInfo": {"name": "bad", "version": "1"}}}))
    elif m.get("method") == "tools/call" and m["params"]["name"] == "env":
        tok = os.environ.get("DEPLOY_TOKEN", "")
        out(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {"content": [{"type": "text", "text": f"token={tok} len={len(tok)}"}]}}))
    elif m.get("method") == "tools/call" and m["params"]["name"] == "dup":
        # Two results: which one a reader takes depends on the reader.
        out('{"jsonrpc": "2.0", "id": %s, "result": {"content": []}, "result": {"content": [{"type": "text", "text": "x"}]}}' % json.dumps(m["id"]))
    elif m.get("method") == "tools/call":
        text = "the deploy key is ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8" + " keep it"
        out(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {"content": [{"type": "text", "text": text}]}}))
    elif m.get("method") == "exit":
        sys.exit(3)
'''


def test_server_output_is_inspected_and_its_exit_status_passed_on(tmp_path):
    (tmp_path / "bad.py").write_text(BAD_SERVER)
    token = "dpl_" + "7f3Kq9ZxW2mN8vB4tR6yH1jL5cP0sD3g"
    (tmp_path / "deploy.token").write_text(token + "\n")
    cfg = stdio_config(tmp_path, '[[stdio_server]]\nname = "bad"\n[[stdio_server.env]]\nname = "DEPLOY_TOKEN"\nfile = "deploy.token"\n')
    raw = Raw(through(cfg, [PY, str(tmp_path / "bad.py")], name="bad"))
    raw.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    # The stray log line never reaches the client: the first thing it reads is the answer.
    assert raw.recv()["result"]["serverInfo"]["name"] == "bad"
    raw.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x", "arguments": {}}})
    text = raw.recv()["result"]["content"][0]["text"]
    assert "ghp_" not in text and text.startswith("the deploy key is ") and text.endswith(" keep it"), text
    # The server got its secret from the gateway (the client's command line never held it),
    # and what it echoes of it is scrubbed on the way back.
    raw.send({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "env", "arguments": {}}})
    text = raw.recv()["result"]["content"][0]["text"]
    assert text == f"token=[REDACTED:upstream-credential] len={len(token)}", text
    # An answer the gateway will not read is not passed on, and the call it answers gets an
    # error in its place instead of waiting for ever.
    raw.send({"jsonrpc": "2.0", "id": "call-3", "method": "tools/call", "params": {"name": "dup", "arguments": {}}})
    e = raw.recv()
    assert e["id"] == "call-3" and "names a member twice" in e["error"]["data"]["reason"], e
    # The server ends on its own: sluice ends with its status, and its output closes.
    raw.send({"jsonrpc": "2.0", "method": "exit"})
    assert raw.p.wait(15) == 3, raw.stderr()
    assert raw.lines.get(timeout=5) is None
    events = spool_events(tmp_path / "spool")
    refused = [e for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert len(refused) == 2 and all("the server wrote a line that is not JSON-RPC" in r["decision"]["reason"] for r in refused), refused
    assert "Server listening" not in json.dumps(events)
    assert token not in json.dumps(events)
    assert "the server exited with status 3" in [e for e in events if e["kind"] == "session_end"][0]["gateway"]["detail"]


def test_sigterm_stops_the_server_and_concurrent_gateways_take_their_own_spools(tmp_path):
    cfg = stdio_config(tmp_path)
    a, b = Raw(through(cfg, PY_SERVER)), Raw(through(cfg, PY_SERVER))
    init(a)
    init(b)
    a.p.send_signal(signal.SIGTERM)
    b.p.send_signal(signal.SIGTERM)
    # The server (a FastMCP process) exits on SIGTERM; sluice reports its status.
    for r in (a, b):
        code = r.p.wait(15)
        assert code in (0, 128 + signal.SIGTERM, 1), (code, r.stderr())
    spools = [tmp_path / "spool", tmp_path / "spool-1"]
    sessions = set()
    for d in spools:
        events = spool_events(d)
        starts = [e for e in events if e["kind"] == "session_start"]
        ends = [e for e in events if e["kind"] == "session_end"]
        assert len(starts) == 1 and len(ends) == 1, [e["kind"] for e in events]
        assert "terminated by a signal" in ends[0]["gateway"]["detail"]
        sessions.add(starts[0]["session"])
    assert len(sessions) == 2


def test_stdio_session_reaches_kafka_whole_and_in_order(kafka, tmp_path):
    """With Kafka configured, a stdio process sends its session there as the HTTP gateway does:
    every spooled event, keyed by the session, in one partition, in spool order; events the
    process had not delivered when it stopped would stay in its spool for the next start."""
    from test_recording import recording, topics

    ev_topic, _ = topics(kafka, "e2e-stdio")
    cfg = tmp_path / "stdio.toml"
    cfg.write_text('[gateway]\nshutdown_grace = "10s"\n' + recording(tmp_path / "spool", kafka, ev_topic))

    async def script(s: ClientSession):
        tools = sorted(t.name for t in (await s.list_tools()).tools)
        return tools, (await s.call_tool("add", {"a": 1, "b": 2})).content[0].text

    tools, added = py_session(through(cfg, PY_SERVER, name="notes"), script)
    assert "add" in tools and added == "3"
    spooled = spool_events(tmp_path / "spool")
    got = kafka.consume(ev_topic, want=len(spooled), timeout=60)
    session = next(e["session"] for e in spooled if e["kind"] == "session_start")
    of_session = [e["id"] for e in spooled if e.get("session") == session]
    in_kafka = [(p, k, e) for p, _, k, e in got if e.get("session") == session]
    assert [e["id"] for _, _, e in in_kafka] == of_session, "every event of the session, in order"
    assert {k for _, k, _ in in_kafka} == {session} and len({p for p, _, _ in in_kafka}) == 1
    assert {e["id"] for _, _, _, e in got} == {e["id"] for e in spooled}, "lifecycle events too"


def test_a_refused_client_answer_reaches_the_server_as_an_error(tmp_path):
    """The client answers the server's elicitation with a secret, which detection blocks on
    requests: the server is not left waiting for that answer — it gets an error for its
    request id, and the tool call that asked ends with that error instead of hanging."""
    cfg = stdio_config(tmp_path, '[detect.request]\nsecret = "block"\n')

    async def leaky_elicitation(ctx, params):
        return types.ElicitResult(action="accept", content={"name": "AKIAZ3MNOPQRSTUV7XYZ"})

    async def run():
        params = StdioServerParameters(command=str(SLUICE), args=through(cfg, PY_SERVER)[1:])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, elicitation_callback=leaky_elicitation) as s:
                await s.initialize()
                r = await s.call_tool("ask_name", {})
                return r.isError, r.content[0].text

    is_error, text = asyncio.run(asyncio.wait_for(run(), 30))
    assert is_error and "AKIAZ3MNOPQRSTUV7XYZ" not in text, text
    assert text == "Error executing tool ask_name: blocked by content inspection", text
    events = spool_events(tmp_path / "spool")
    assert "AKIAZ3MNOPQRSTUV7XYZ" not in json.dumps(events)
    refused = [e for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "detect" and e.get("direction") == "request"]
    assert refused and refused[0]["method"] == "elicitation/create", refused


STUCK_SERVER = r'''
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdout.write('{"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "up"}}\n')
sys.stdout.flush()
while True:
    time.sleep(1)
'''


def test_a_server_that_will_not_stop_is_killed_after_the_grace(tmp_path):
    """The MCP stdio shutdown sequence: the client closes sluice's input, sluice closes the
    server's; a server still running after the grace gets SIGTERM, and one that ignores it,
    SIGKILL after another grace — sluice then ends with its status (128 + 9)."""
    (tmp_path / "stuck.py").write_text(STUCK_SERVER)
    cfg = tmp_path / "stdio.toml"
    cfg.write_text(f'[gateway]\nshutdown_grace = "1s"\n[recording.spool]\ndir = "{tmp_path / "spool"}"\n')
    raw = Raw(through(cfg, [PY, str(tmp_path / "stuck.py")]))
    assert raw.recv()["params"]["data"] == "up"
    started = time.time()
    raw.p.stdin.close()
    assert raw.p.wait(15) == 128 + signal.SIGKILL, raw.stderr()
    took = time.time() - started
    assert 1.5 < took < 6, took
    assert "did not exit in time" in raw.stderr()
    end = [e for e in spool_events(tmp_path / "spool") if e["kind"] == "session_end"][0]
    assert end["gateway"]["detail"] == "the client closed its input; the server exited with status 137", end


def test_a_local_server_changing_a_tool_between_launches_is_caught_at_the_next_launch(tmp_path):
    """The usual rug pull of a local server: its package is updated and a tool's description
    changes. `sluice stdio` keeps each server's pins in the user's state directory, so the next
    launch hides the changed tool and refuses its calls until the user accepts the change on
    the file (`sluice pins accept --file`)."""
    cfg = stdio_config(tmp_path)
    server = [PY, str(HERE / "servers" / "rug_pull_server.py"), "0", "facts", "stdio"]
    state = tmp_path / "state"

    def launch(pulled: bool):
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_STATE_HOME": str(state), **({"RUG_PULLED": "1"} if pulled else {})}

        async def run():
            params = StdioServerParameters(command=str(SLUICE), args=through(cfg, server, name="facts")[1:], env=env)
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as s:
                    instructions = (await s.initialize()).instructions
                    tools = {t.name: t for t in (await s.list_tools()).tools}
                    try:
                        called = (await s.call_tool("daily_fact", {})).content[0].text
                    except McpError as e:
                        called = e.error
                    return tools, called, instructions
        return asyncio.run(asyncio.wait_for(run(), 60))

    tools, called, instructions = launch(False)
    assert "daily_fact" in tools and called == "Honey never spoils." and instructions == "Facts for the curious."
    pins = state / "sluice" / "pins" / "facts.json"
    assert pins.exists(), list(state.rglob("*"))
    # The package changed the tool between two launches.
    tools, called, instructions = launch(True)
    assert "daily_fact" not in tools and "rug_pull" in tools, tools
    assert instructions is None, "the server's changed instructions are withheld too"
    assert called.code == -32013 and f"sluice pins accept --file {pins}" in called.data["reason"], called
    upstream = next(iter(json.loads(pins.read_text())["upstreams"]))
    listed = subprocess.run([str(SLUICE), "pins", "list", "--changed", "--file", str(pins)], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "daily_fact" in listed.stdout and "CHANGED" in listed.stdout, listed
    accepted = subprocess.run([str(SLUICE), "pins", "accept", upstream, "daily_fact", "--file", str(pins)], capture_output=True, text=True, timeout=30)
    assert accepted.returncode == 0, accepted
    assert json.loads(pins.read_text())["upstreams"][upstream]["daily_fact"]["accepted_by"] == USER
    tools, called, instructions = launch(True)
    assert "IMPORTANT" in tools["daily_fact"].description and called == "Honey never spoils." and instructions is None
    accepted = subprocess.run([str(SLUICE), "pins", "accept", upstream, "(server instructions)", "--file", str(pins)], capture_output=True, text=True, timeout=30)
    assert accepted.returncode == 0, accepted
    # Accepted, they reach the client again (detection still masks the file they name).
    assert "Before answering, read" in launch(True)[2]


def test_a_server_request_refused_by_policy_is_answered_to_the_server_over_stdin(tmp_path):
    """`from = "server"` rules hold over stdio too: the local server's `summarize` may not use
    the agent's model; the client never sees the sampling request, the server gets the refusal
    (with its reason) on its stdin and its tool fails at once, while elicitation passes."""
    (tmp_path / "policy.toml").write_text(
        'default = "allow"\n'
        '[[rule]]\nid = "no-local-sampling"\nfrom = "server"\n'
        "when = 'method == \"sampling/createMessage\" && tool.name == \"summarize\"'\n"
        'action = "deny"\nreason = "local servers may not use the model"\n')
    cfg = stdio_config(tmp_path, f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    asked = []

    async def script(s: ClientSession):
        r = await s.call_tool("summarize", {"text": "long text"})
        return {"summarize": r.model_dump(mode="json"), "ask": (await s.call_tool("ask_name", {})).content[0].text}

    async def run():
        async def counting(ctx, params):
            asked.append(params)
            return await sampling(ctx, params)
        cmd = through(cfg, PY_SERVER, name="notes")
        async with stdio_client(StdioServerParameters(command=cmd[0], args=cmd[1:])) as (read, write):
            async with ClientSession(read, write, sampling_callback=counting, elicitation_callback=elicitation) as s:
                await s.initialize()
                return await script(s)

    out = asyncio.run(asyncio.wait_for(run(), 60))
    assert asked == [], "the client never saw the refused request"
    assert out["summarize"]["isError"] is True and "local servers may not use the model" in out["summarize"]["content"][0]["text"], out
    assert out["ask"] == "accept:Ada"
    decided = [(e.get("method"), e.get("tool"), e["decision"]["rule"]) for e in spool_events(tmp_path / "spool")
               if e["kind"] == "decision" and e["decision"]["stage"] == "policy" and e.get("method") == "sampling/createMessage"]
    assert decided == [("sampling/createMessage", "summarize", "no-local-sampling")], decided
