"""Human approvals end to end: a call a rule marks `require_approval` is held (the agent — the
official Python SDK client — hears progress while it waits), a reviewer with a token of the
approver group (from the real OpenID Provider) decides it through the admin API or the CLI,
and the call goes through once, is refused with the reviewer's reason, or expires. Every step
is recorded."""

import asyncio
import json
import subprocess
import threading
import time

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

from conftest import HERE, NODE, SLUICE, Proc, spool_events
from test_identity import AUDIENCE, idp  # noqa: F401 (the OpenID Provider fixture)

POLICY = """
[[rule]]
id = "protocol"
when = 'identity.authenticated && (method in ["initialize", "ping", "tools/list"] || method.startsWith("notifications/"))'
action = "allow"

[[rule]]
id = "big-sums"
when = 'tool.name == "add" && args.a > 100'
action = "require_approval"
approvers = ["finance"]
timeout = "60s"

[[rule]]
id = "shouting-is-slow"
when = 'tool.name == "shout"'
action = "require_approval"
approvers = ["finance"]
timeout = "3s"

[[rule]]
id = "support"
when = '"support" in identity.groups'
action = "allow"
"""


def identity_and_policy(idp, tmp_path) -> str:
    """The config for the OpenID Provider's callers and `POLICY` (written to `tmp_path`)."""
    (tmp_path / "policy.toml").write_text(POLICY)
    return (f'[identity]\nissuer = "{idp.issuer}"\naudience = ["{AUDIENCE}"]\nagent_type_claim = "agent_type"\n'
            f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')


@pytest.fixture
def gw(idp, gateway, py_json, tmp_path):
    return gateway([{"path": "/mcp", "upstream": py_json}], extra=identity_and_policy(idp, tmp_path))


def agent_call(url, token, name, args, out, daemon=False):
    """Run one tool call in a thread; `out` gets ("ok", text, progress) or ("error", code, reason, progress).
    `daemon`: for calls cut by a gateway's crash, which the SDK client can take many minutes to give up."""

    async def run():
        progress = []

        async def on_progress(p, total, message):
            progress.append(message)

        async with streamablehttp_client(url, headers={"authorization": f"Bearer {token}"}) as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                try:
                    r = await s.call_tool(name, args, progress_callback=on_progress)
                    out.append(("ok", r.content[0].text, progress))
                except McpError as e:
                    out.append(("error", e.error.code, (e.error.data or {}).get("reason", ""), progress))

    t = threading.Thread(target=lambda: asyncio.run(run()), daemon=daemon)
    t.start()
    return t


def pending(g, token, tool, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = httpx.get(g.admin("/approvals"), headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        found = [a for a in r.json()["approvals"] if a["tool"] == tool]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no pending approval for {tool}")


def test_a_held_call_waits_with_progress_and_goes_through_once_approved(gw, idp):
    agent, reviewer, intern = idp.token("support-agent"), idp.token("finance-reviewer"), idp.token("intern-agent")
    out = []
    t = agent_call(gw.url(), agent, "add", {"a": 500, "b": 1}, out)
    a = pending(gw, reviewer, "add")
    assert a["state"] == "pending" and a["subject"] == "support-agent" and a["rule"] == "big-sums"
    assert a["arguments"] == {"a": 500, "b": 1} and len(a["args_digest"]) == 64
    # Without a token, with an agent's token, or by someone outside the approver group: refused.
    assert httpx.get(gw.admin("/approvals")).status_code == 401
    r = httpx.post(gw.admin(f"/approvals/{a['id']}/approve"), headers={"authorization": f"Bearer {intern}"}, json={})
    assert r.status_code == 403 and "finance" in r.json()["error"]
    r = httpx.post(gw.admin(f"/approvals/{a['id']}/approve"), headers={"authorization": "Bearer not.a.jwt"}, json={})
    assert r.status_code == 401
    time.sleep(1.5)
    assert t.is_alive() and not out, "the call waits while no one decided"
    # The reviewer approves with the CLI.
    r = subprocess.run([str(SLUICE), "approvals", "--admin", gw.admin(""), "approve", a["id"], "--reason", "expected"],
                       capture_output=True, text=True, timeout=30, env={"SLUICE_REVIEWER_TOKEN": reviewer, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    t.join(30)
    assert out and out[0][:2] == ("ok", "501"), out
    assert out[0][2] and "waiting for approval" in out[0][2][0], "progress was reported while waiting"
    # Used: the same decision cannot be taken twice; the same call again needs a new approval.
    r = httpx.post(gw.admin(f"/approvals/{a['id']}/approve"), headers={"authorization": f"Bearer {reviewer}"}, json={})
    assert r.status_code == 409
    listed = httpx.get(gw.admin("/approvals?all=1"), headers={"authorization": f"Bearer {reviewer}"}).json()["approvals"]
    assert [x["state"] for x in listed if x["id"] == a["id"]] == ["used"]


def test_denied_and_expired_calls_get_errors_that_say_so_and_every_step_is_recorded(gw, idp):
    agent, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    out = []
    t = agent_call(gw.url(), agent, "add", {"a": 900, "b": 9}, out)
    a = pending(gw, reviewer, "add")
    r = httpx.post(gw.admin(f"/approvals/{a['id']}/deny"), headers={"authorization": f"Bearer {reviewer}"}, json={})
    assert r.status_code == 400, "a denial needs a reason"
    r = httpx.post(gw.admin(f"/approvals/{a['id']}/deny"), headers={"authorization": f"Bearer {reviewer}"},
                   json={"reason": "over the monthly limit"})
    assert r.status_code == 200, r.text
    t.join(30)
    assert out[0][:2] == ("error", -32011), out
    assert "finance-reviewer denied this call: over the monthly limit" in out[0][2]

    out2 = []
    t = agent_call(gw.url(), agent, "shout", {"text": "hello"}, out2)
    t.join(30)
    assert out2[0][:2] == ("error", -32011), out2
    assert "decided in time" in out2[0][2]

    # Small sums need no one.
    out3 = []
    agent_call(gw.url(), agent, "add", {"a": 1, "b": 2}, out3).join(30)
    assert out3[0][:2] == ("ok", "3")

    deadline = time.time() + 15
    while time.time() < deadline:
        steps = [(e["kind"], e["approval"]["state"], e["approval"].get("by"), e["tool"])
                 for e in spool_events(gw.spool) if e["kind"].startswith("approval_")]
        if len(steps) >= 4:
            break
        time.sleep(0.3)
    assert ("approval_requested", "requested", None, "add") in steps
    assert ("approval_decided", "denied", "finance-reviewer", "add") in steps
    assert ("approval_requested", "requested", None, "shout") in steps
    assert ("approval_expired", "expired", None, "shout") in steps
    decided = next(e for e in spool_events(gw.spool) if e["kind"] == "approval_decided")
    assert decided["approval"]["reason"] == "over the monthly limit" and decided["approval"]["waited_ms"] > 0
    assert decided["identity"]["subject"] == "support-agent"


def test_the_approvals_page_in_a_real_browser_lets_a_reviewer_approve(gw, idp, tmp_path):
    """Headless Chromium (Debian's, driven by playwright-core) on the admin listener's page."""
    agent, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    out = []
    t = agent_call(gw.url(), agent, "add", {"a": 4000, "b": 2}, out)
    shot = tmp_path / "approvals.png"
    r = subprocess.run([NODE, str(HERE / "clients" / "approve_page.mjs"), gw.admin(""), reviewer, "add", "approve", str(shot)],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    page = json.loads(r.stdout.strip().splitlines()[-1])
    assert page["who"] == "Signed in as finance-reviewer"
    assert "support-agent (support, readers)" in page["cells"] and "add" in page["cells"] and "big-sums" in page["cells"]
    assert '"a": 4000' in " ".join(page["cells"]), page["cells"]
    assert page["msg"] == "Approved add for support-agent."
    t.join(30)
    assert out and out[0][:2] == ("ok", "4002"), out
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1280 and height >= 300


def test_approval_steps_reach_the_approvals_topic_in_kafka(idp, gateway, py_json, kafka, tmp_path):
    """With Kafka configured, approval steps go to the approvals topic (and the events topic)."""
    from test_recording import topics

    ev, ap = topics(kafka, "e2e-approvals")
    extra = (identity_and_policy(idp, tmp_path) +
             f'[recording]\n[recording.spool]\ndir = "{tmp_path / "spool"}"\n'
             f'[recording.kafka]\nbrokers = "{kafka.bootstrap}"\nevents_topic = "{ev}"\napprovals_topic = "{ap}"\nlinger = "2ms"\n')
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=extra)
    reviewer = idp.token("finance-reviewer")
    out = []
    t = agent_call(g.url(), idp.token("support-agent"), "add", {"a": 7000, "b": 7}, out)
    a = pending(g, reviewer, "add")
    r = httpx.post(g.admin(f"/approvals/{a['id']}/approve"), headers={"authorization": f"Bearer {reviewer}"}, json={"reason": "ok"})
    assert r.status_code == 200
    t.join(30)
    assert out[0][:2] == ("ok", "7007"), out
    got = kafka.consume(ap, timeout=60, until=lambda m: len([x for x in m if x[3]["approval"]["id"] == a["id"]]) >= 2)
    steps = [(e["kind"], e["approval"]["state"]) for _, _, _, e in got if e["approval"]["id"] == a["id"]]
    assert ("approval_requested", "requested") in steps and ("approval_decided", "approved") in steps, steps
    assert all(e["kind"].startswith("approval_") for _, _, _, e in got), "only approval steps on the approvals topic"


def test_an_approval_does_not_carry_over_to_changed_arguments(gw, idp):
    """The agent gives up waiting; the reviewer approves anyway. A retry with other arguments is
    not covered (it waits for its own approval); the retry with the approved arguments goes
    through at once, once."""
    reviewer = idp.token("finance-reviewer")
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json",
         "authorization": f"Bearer {idp.token('support-agent')}"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}

    def call(i, a):
        return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "add", "arguments": {"a": a, "b": 1}}}

    with httpx.Client(timeout=20) as c:
        r = c.post(gw.url(), json=init, headers=h)
        h["mcp-session-id"] = r.headers["mcp-session-id"]
        h["mcp-protocol-version"] = "2025-06-18"
        c.post(gw.url(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)

        def held_then_leave(i, a):
            with c.stream("POST", gw.url(), json=call(i, a), headers=h) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                for line in r.iter_lines():
                    if line.startswith("data:") and "waiting for approval" in line:
                        return json.loads(line[5:])

        note = held_then_leave(1, 500)
        assert note["method"] == "notifications/message", note
        first = pending(gw, reviewer, "add")
        r = httpx.post(gw.admin(f"/approvals/{first['id']}/approve"), headers={"authorization": f"Bearer {reviewer}"}, json={})
        assert r.status_code == 200
        # Changed arguments: held again, under a request of their own.
        held_then_leave(2, 900)
        listed = {x["id"]: x for x in httpx.get(gw.admin("/approvals?all=1"), headers={"authorization": f"Bearer {reviewer}"}).json()["approvals"]}
        assert listed[first["id"]]["state"] == "approved", "not used by the changed call"
        other = [x for x in listed.values() if x["id"] != first["id"]]
        assert len(other) == 1 and other[0]["state"] == "pending" and other[0]["arguments"] == {"a": 900, "b": 1}
        assert other[0]["args_digest"] != first["args_digest"]
        # The approved arguments: straight through, once.
        r = c.post(gw.url(), json=call(3, 500), headers=h)
        text = r.text
        assert '"501"' in text or "501" in text, text
        listed = {x["id"]: x for x in httpx.get(gw.admin("/approvals?all=1"), headers={"authorization": f"Bearer {reviewer}"}).json()["approvals"]}
        assert listed[first["id"]]["state"] == "used"


def test_a_reviewer_can_never_approve_their_own_call(gw, idp):
    reviewer = idp.token("finance-reviewer")
    out = []
    t = agent_call(gw.url(), reviewer, "add", {"a": 12345, "b": 0}, out)
    a = pending(gw, reviewer, "add")
    assert a["subject"] == "finance-reviewer"
    r = httpx.post(gw.admin(f"/approvals/{a['id']}/approve"), headers={"authorization": f"Bearer {reviewer}"}, json={})
    assert r.status_code == 403 and "own call" in r.json()["error"], r.text
    r = httpx.post(gw.admin(f"/approvals/{a['id']}/deny"), headers={"authorization": f"Bearer {reviewer}"}, json={"reason": "x"})
    assert r.status_code == 403
    assert t.is_alive() and not out, "still waiting for someone else"
    # A gateway that shuts down lets held calls go with an error instead of keeping them.
    gw.proc.stop()
    t.join(30)
    assert out and out[0][:2] == ("error", -32011) and "restarting" in out[0][2], out



def _kept_gateway(idp, gateway, py_json, tmp_path):
    state = tmp_path / "state" / "approvals.json"
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=identity_and_policy(idp, tmp_path) + f'[approvals]\nstate_file = "{state}"\n')
    return g, state


def test_a_held_call_and_its_approval_survive_a_restart(idp, gateway, py_json, tmp_path):
    """`approvals.state_file`: a restart (a config change that needs one, an upgrade) answers
    the held call with an error saying its approval stays open; the reviewer finds the same
    request on the restarted gateway and approves it; the agent's call sent again goes through,
    once."""
    g, state = _kept_gateway(idp, gateway, py_json, tmp_path)
    agent, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    out = []
    t = agent_call(g.url(), agent, "add", {"a": 700, "b": 1}, out)
    a = pending(g, reviewer, "add")
    g.restart()
    t.join(30)
    assert out and out[0][:2] == ("error", -32011) and f"approval {a['id']} stays open across the restart" in out[0][2], out
    assert oct(state.stat().st_mode & 0o777) == "0o600", "it holds arguments and reviewers' names"
    assert json.loads(state.read_text())["clean"] is False, "a running gateway's file is marked in use"
    assert "approval requests carried over from the last run" in g.proc.text()
    b = pending(g, reviewer, "add")
    assert (b["id"], b["requested_at"], b["arguments"]) == (a["id"], a["requested_at"], {"a": 700, "b": 1})
    r = httpx.post(g.admin(f"/approvals/{a['id']}/approve"), headers={"authorization": f"Bearer {reviewer}"}, json={"reason": "after the restart"})
    assert r.status_code == 200, r.text
    out2 = []
    agent_call(g.url(), agent, "add", {"a": 700, "b": 1}, out2).join(30)
    assert out2 and out2[0][:2] == ("ok", "701"), out2
    # Used: the same call again waits for a new approval.
    out3 = []
    t = agent_call(g.url(), agent, "add", {"a": 700, "b": 1}, out3)
    c = pending(g, reviewer, "add")
    assert c["id"] != a["id"]
    g.proc.stop()
    t.join(30)
    steps = [(e["kind"], e["approval"]["id"]) for e in spool_events(g.spool) if e["kind"].startswith("approval_")]
    assert steps == [("approval_requested", a["id"]), ("approval_decided", a["id"]), ("approval_requested", c["id"])], steps


def test_a_crash_withdraws_an_approval_not_yet_used(idp, gateway, py_json, tmp_path):
    """After `kill -9` the file may not know that an approval was used in the gateway's last
    second, and an approval lets one call through: approvals given but unused are withdrawn
    (the call is held anew); requests still waiting are kept."""
    g, state = _kept_gateway(idp, gateway, py_json, tmp_path)
    agent, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    auth = {"authorization": f"Bearer {reviewer}"}

    def crash_and_start():
        g.proc.p.kill()
        g.proc.p.wait()
        g.proc.fh.close()
        g.proc = Proc([str(SLUICE), "run", "--config", str(g.config)], g.tmp / "sluice.log", {"RUST_LOG": "info"})
        g.wait_ready()

    out, out2 = [], []
    agent_call(g.url(), agent, "add", {"a": 800, "b": 1}, out, daemon=True)
    a = pending(g, reviewer, "add")
    agent_call(g.url(), agent, "add", {"a": 900, "b": 1}, out2, daemon=True)
    wait_for(lambda: len(httpx.get(g.admin("/approvals"), headers=auth).json()["approvals"]) == 2, "the second call held")
    other = next(x["id"] for x in httpx.get(g.admin("/approvals"), headers=auth).json()["approvals"] if x["id"] != a["id"])
    wait_for(lambda: len(json.loads(state.read_text())["entries"]) == 2, "both requests written")
    crash_and_start()
    # Approved while no call waits for it (its agent's connection died with the gateway; the
    # SDK client takes its time to give up, which does not matter here), written, crash.
    r = httpx.post(g.admin(f"/approvals/{a['id']}/approve"), headers=auth, json={})
    assert r.status_code == 200, r.text
    wait_for(lambda: {e["id"]: e["state"] for e in json.loads(state.read_text())["entries"]}.get(a["id"]) == "approved", "the approval written")
    crash_and_start()
    assert "approvals given but not yet used are withdrawn" in g.proc.text()
    listed = {x["id"]: x["state"] for x in httpx.get(g.admin("/approvals?all=1"), headers=auth).json()["approvals"]}
    assert listed == {a["id"]: "expired", other: "pending"}, listed
    wait_for(lambda: any(e["kind"] == "approval_expired" and e["approval"]["id"] == a["id"] for e in spool_events(g.spool)), "the withdrawal recorded")
    # The call sent again is held for a new approval: the withdrawn one lets nothing through.
    out3 = []
    t = agent_call(g.url(), agent, "add", {"a": 800, "b": 1}, out3)
    wait_for(lambda: len(httpx.get(g.admin("/approvals"), headers=auth).json()["approvals"]) == 2, "the call held again")
    held = {x["id"] for x in httpx.get(g.admin("/approvals"), headers=auth).json()["approvals"]}
    assert other in held and a["id"] not in held
    assert t.is_alive() and not out3
    g.proc.stop()
    t.join(30)
    assert out3 and out3[0][:2] == ("error", -32011), out3


def wait_for(f, what, timeout=20):
    deadline = time.time() + timeout
    while not f():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Webhook:
    """An HTTP endpoint that keeps what is posted to it (what a chat or ticketing system's
    incoming webhook would get), answering `statuses` in turn, then 200."""

    def __init__(self, statuses=()):
        import http.server

        self.posts, self.statuses = [], list(statuses)
        hook = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.posts.append((self.path, self.headers.get("content-type"), json.loads(body)))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0/B0/s3cr3t"

    def wait(self, n, timeout=20):
        deadline = time.time() + timeout
        while len(self.posts) < n and time.time() < deadline:
            time.sleep(0.1)
        return self.posts


def test_reviewers_are_told_by_webhook_and_can_act_on_what_it_says(idp, gateway, py_json, tmp_path):
    """Each `[[approvals.notify]]` webhook is told when a call is held and when it is decided:
    a JSON one gets the approval record (masked arguments, its id), a chat one a message linking
    the reviewers' page. The reviewer decides by the id the notification carried — no polling
    of the page — and the agent's call goes through. A webhook that fails at first is tried
    again; webhook URLs (secrets) come from files and never show in metrics or logs."""
    audit, chat = Webhook(statuses=[503]), Webhook()
    (tmp_path / "audit.url").write_text(audit.url + "\n")
    (tmp_path / "chat.url").write_text(chat.url)
    extra = (identity_and_policy(idp, tmp_path) +
             f'[approvals]\npage_url = "https://gw-admin.example.com/approvals/ui"\n'
             f'[[approvals.notify]]\nname = "audit"\nurl_file = "{tmp_path / "audit.url"}"\n'
             f'[[approvals.notify]]\nname = "chat"\nurl_file = "{tmp_path / "chat.url"}"\nformat = "slack"\non = ["requested"]\n')
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=extra)
    reviewer = idp.token("finance-reviewer")
    out = []
    t = agent_call(g.url(), idp.token("support-agent"), "add", {"a": 640, "b": 2}, out)
    [(path, ctype, note)] = audit.wait(1)
    assert path == "/hooks/T0/B0/s3cr3t" and ctype == "application/json", (path, ctype)
    assert note["source"] == "sluice" and note["step"] == "requested" and note["page"] == "https://gw-admin.example.com/approvals/ui", note
    a = note["approval"]
    assert (a["state"], a["subject"], a["tool"], a["rule"], a["arguments"], a["approvers"]) == ("pending", "support-agent", "add", "big-sums", {"a": 640, "b": 2}, ["finance"]), a
    [(_, _, msg)] = chat.wait(1)
    assert "*Approval needed*: `support-agent` calls `add`" in msg["text"] and '{"a":640,"b":2}' in msg["text"], msg
    assert "<https://gw-admin.example.com/approvals/ui|approvals page>" in msg["text"] and a["id"] in msg["text"], msg
    assert t.is_alive() and not out, "the call waits"
    r = httpx.post(g.admin(f"/approvals/{a['id']}/approve"), headers={"authorization": f"Bearer {reviewer}"}, json={"reason": "quarter end"})
    assert r.status_code == 200, r.text
    t.join(30)
    assert out and out[0][:2] == ("ok", "642"), out
    decided = audit.wait(2)[1][2]
    assert decided["step"] == "decided" and decided["approval"]["state"] == "approved" and decided["approval"]["by"] == "finance-reviewer", decided
    assert decided["approval"]["reason"] == "quarter end" and decided["approval"]["id"] == a["id"], decided
    time.sleep(0.5)
    assert len(chat.posts) == 1, "the chat webhook asked only for requests"
    assert g.metric("sluice_approval_notifications_total", webhook="audit", result="sent") == 2
    assert g.metric("sluice_approval_notifications_total", webhook="chat", result="sent") == 1
    metrics = httpx.get(g.admin("/metrics")).text
    assert "s3cr3t" not in metrics and "s3cr3t" not in g.proc.text()
    checked = subprocess.run([str(SLUICE), "check", "--config", str(g.config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "webhook chat (slack) told of requested" in checked.stdout and "s3cr3t" not in checked.stdout + checked.stderr, checked


def test_a_reviewer_decides_on_any_gateway_of_the_deployment(idp, gateway, py_json, tmp_path):
    """Calls are held by the gateway that took them; with `approvals.peers` a reviewer on
    another gateway of the deployment sees them (marked with the gateway holding them) and
    decides them there — the holding gateway applies and records the decision. A peer that
    cannot be asked is named in the listing, the rest still listed."""
    from conftest import free_port

    (tmp_path / "a").mkdir()
    a = gateway([{"path": "/mcp", "upstream": py_json}], extra=identity_and_policy(idp, tmp_path / "a"), home="a")
    dead = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "b").mkdir()
    b = gateway([{"path": "/mcp", "upstream": py_json}],
                extra=identity_and_policy(idp, tmp_path / "b") + f'[approvals]\npeers = ["{a.admin("")}", "{dead}"]\n', home="b")
    checked = subprocess.run([str(SLUICE), "check", "--config", str(b.config)], capture_output=True, text=True, timeout=30)
    assert f"approvals: also listed and decided here for the peers {a.admin('')}, {dead}" in checked.stdout, checked
    agent, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    out = []
    t = agent_call(a.url(), agent, "add", {"a": 700, "b": 1}, out)
    held = pending(b, reviewer, "add")
    assert held["gateway"] == a.admin("") and held["subject"] == "support-agent", held
    listing = httpx.get(b.admin("/approvals"), headers={"authorization": f"Bearer {reviewer}"}, timeout=15).json()
    peers = {p["peer"]: p for p in listing["peers"]}
    assert peers[a.admin("")]["ok"] and not peers[dead]["ok"] and "refused" in peers[dead]["error"].lower(), listing
    # The reviewers' CLI pointed at B approves a call A holds.
    r = subprocess.run([str(SLUICE), "approvals", "--admin", b.admin(""), "approve", held["id"], "--reason", "checked"],
                       capture_output=True, text=True, timeout=30, env={"SLUICE_REVIEWER_TOKEN": reviewer, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    t.join(30)
    assert out and out[0][:2] == ("ok", "701"), out
    # A decided and recorded it; B holds nothing of it.
    assert [x["state"] for x in httpx.get(a.admin("/approvals?all=1"), headers={"authorization": f"Bearer {reviewer}"}).json()["approvals"]] == ["used"]
    a.proc.stop()
    decided = [e for e in spool_events(a.spool) if e["kind"] == "approval_decided"]
    assert decided and decided[0]["approval"]["by"] == "finance-reviewer", decided
    assert not [e for e in spool_events(b.spool) if e["kind"].startswith("approval")]
