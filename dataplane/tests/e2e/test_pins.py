"""Tool pinning: the gateway pins each upstream's tool definitions on first sight; a server that
later serves another definition of a tool (a rug pull) has it hidden and its calls refused until
an operator accepts the change, across restarts (the pins file); tools of one server named in
another's descriptions (shadowing) and names two servers share (collisions) are recorded; the
analyzer's `call-after-pin-change` rule fires on the gateway's own events. Real MCP servers
(the Python SDK) that change a tool's description while running; a real OpenID Provider for
the agent and the operator."""

import json
import subprocess
import time

import httpx
import pytest

from conftest import PY, HERE, SLUICE, Proc, free_port, spool_events, wait_port
from test_analyzer import analyzer
from test_identity import ACCEPT, AUDIENCE, INIT, identity_cfg, idp  # noqa: F401 (the OpenID Provider fixture)


def server(tmp_path, role):
    port = free_port()
    p = Proc([PY, str(HERE / "servers" / "rug_pull_server.py"), str(port), role], tmp_path / f"{role}.log")
    wait_port(port, proc=p.p)
    return p, f"http://127.0.0.1:{port}/mcp"


@pytest.fixture
def servers(tmp_path):
    (mail, mail_url), (facts, facts_url) = server(tmp_path, "mail"), server(tmp_path, "facts")
    yield mail_url, facts_url
    mail.stop()
    facts.stop()


class Agent:
    """An MCP session over plain HTTP, with a bearer token."""

    def __init__(self, g, path, token):
        self.url, self.h = g.url(path), {**ACCEPT, "mcp-protocol-version": "2025-06-18", **({"authorization": f"Bearer {token}"} if token else {})}
        r = httpx.post(self.url, json=INIT, headers=self.h, timeout=10)
        assert r.status_code == 200, r.text
        self.h["mcp-session-id"] = r.headers["mcp-session-id"]
        assert httpx.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.h, timeout=10).status_code == 202
        self.n = 1

    def rpc(self, method, params=None):
        self.n += 1
        r = httpx.post(self.url, json={"jsonrpc": "2.0", "id": self.n, "method": method, "params": params or {}}, headers=self.h, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def tools(self):
        return {t["name"]: t for t in self.rpc("tools/list")["result"]["tools"]}

    def call(self, name, **args):
        return self.rpc("tools/call", {"name": name, "arguments": args})


def pins_cli(g, token, *args):
    return subprocess.run([str(SLUICE), "pins", *args, "--admin", g.admin(""), "--token", token], capture_output=True, text=True, timeout=30)


def test_a_rug_pull_is_hidden_refused_until_accepted_and_remembered_across_a_restart(idp, gateway, servers, tmp_path):
    mail, facts = servers
    extra = identity_cfg(idp) + f'[pins]\nfile = "{tmp_path / "pins.json"}"\napprovers = ["finance"]\n'
    g = gateway([{"path": "/mail", "upstream": mail, "name": "mail"}, {"path": "/facts", "upstream": facts, "name": "facts"}], extra=extra)
    agent, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    assert set(Agent(g, "/mail", agent).tools()) == {"send_email"}
    a = Agent(g, "/facts", agent)
    before = a.tools()
    assert set(before) == {"daily_fact", "rug_pull"} and "IMPORTANT" not in before["daily_fact"]["description"]
    assert a.call("daily_fact")["result"]["content"][0]["text"] == "Honey never spoils."
    # The server rewrites the tool it was trusted with.
    assert a.call("rug_pull")["result"]["content"][0]["text"] == "done"
    assert set(a.tools()) == {"rug_pull"}, "the changed tool is hidden"
    err = a.call("daily_fact")["error"]
    assert err["code"] == -32013 and "sluice pins accept u1 daily_fact" in err["data"]["reason"], err
    # What monitoring alerts on.
    assert g.metric("sluice_pins_changed") == 1 and g.metric("sluice_pin_changes_total", change="changed") == 1
    assert g.metric("sluice_pin_changes_total", change="shadowed") == 1

    # Operators see it; agents may not, nor accept it.
    listed = pins_cli(g, reviewer, "list", "--changed")
    assert listed.returncode == 0 and "daily_fact" in listed.stdout and "CHANGED" in listed.stdout and "rug_pull" not in listed.stdout, listed
    denied = pins_cli(g, agent, "accept", "u1", "daily_fact")
    assert denied.returncode == 2 and "403" in denied.stderr and "pins.approvers" in denied.stderr, denied

    # A restart does not forget: the file holds the pins and the change still waiting.
    g.restart()
    assert json.loads((tmp_path / "pins.json").read_text())["upstreams"]["u1"]["daily_fact"]["changed_to"]
    a = Agent(g, "/facts", agent)
    assert set(a.tools()) == {"rug_pull"} and a.call("daily_fact")["error"]["code"] == -32013

    accepted = pins_cli(g, reviewer, "accept", "u1", "daily_fact")
    assert accepted.returncode == 0 and "accepted daily_fact on u1" in accepted.stdout, accepted
    assert "daily_fact" in a.tools() and a.call("daily_fact")["result"]["content"][0]["text"] == "Honey never spoils."
    assert g.metric("sluice_pins_changed") == 0 and g.metric("sluice_pin_changes_total", change="accepted") == 1
    again = pins_cli(g, reviewer, "accept", "u1", "daily_fact")
    assert again.returncode == 2 and "409" in again.stderr, "nothing left to accept"

    g.proc.stop()
    # `sluice check` reads the pins file too (a damaged one would stop the next start).
    checked = subprocess.run([str(SLUICE), "check", "--config", str(g.config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "3 tool(s) and 2 server's instructions pinned" in checked.stdout, checked
    (tmp_path / "pins.json").write_text((tmp_path / "pins.json").read_text()[:40])
    damaged = subprocess.run([str(SLUICE), "check", "--config", str(g.config)], capture_output=True, text=True, timeout=60)
    assert damaged.returncode == 2 and "is not valid" in damaged.stderr and "move it aside" in damaged.stderr, damaged
    events = spool_events(g.spool)
    pins = [(e["pin"]["change"], e.get("tool"), e["pin"]["tool"]) for e in events if e["kind"] == "pin_change"]
    assert ("changed", "daily_fact", "daily_fact") in pins and ("accepted", "daily_fact", "daily_fact") in pins, pins
    # The new description names the mail server's tool: shadowing, recorded with what names it.
    [shadow] = [e for e in events if e["kind"] == "pin_change" and e["pin"]["change"] == "shadowed"]
    assert (shadow["tool"], shadow["pin"]["tool"], shadow["route"]) == ("daily_fact", "send_email", "facts"), shadow
    assert "upstream u0" in shadow["gateway"]["detail"]
    changed = next(e for e in events if e["kind"] == "pin_change" and e["pin"]["change"] == "changed")
    assert changed["pin"]["old_digest"] != changed["pin"]["new_digest"] and changed["route"] == "facts"
    decisions = [(e["decision"]["action"], e["decision"]["stage"], e["decision"].get("rule")) for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "pins"]
    assert ("refuse", "pins", "pin") in decisions and ("hide", "pins", "pin") in decisions, decisions

    # The analyzer's chain rule reads the gateway's own events: a call after the change.
    archive = tmp_path / "archive"
    analyzer(archive, "ingest", "--spool", str(g.spool))
    alerts = [json.loads(l) for l in analyzer(archive, "chains").stdout.splitlines() if l.strip()]
    hits = [x for x in alerts if x["rule"] == "call-after-pin-change"]
    by_id = {e["id"]: e for e in events}
    assert len(hits) == 1 and by_id[hits[0]["evidence"][0]]["pin"]["change"] == "changed", alerts
    call = by_id[hits[0]["evidence"][1]]
    assert (call["kind"], call["tool"]) == ("request", "daily_fact"), call


def test_changes_only_logged_pass_and_two_servers_sharing_a_name_collide(gateway, servers, tmp_path):
    mail, facts = servers
    g = gateway([{"path": "/facts", "upstream": facts}, {"path": "/facts2", "upstream": facts}, {"path": "/mail", "upstream": mail}],
                extra='[pins]\non_change = "log"\n')
    a = Agent(g, "/facts", None)
    a.tools()
    a.call("rug_pull")
    assert "IMPORTANT" in a.tools()["daily_fact"]["description"], "logged, not hidden"
    assert a.call("daily_fact")["result"]["content"][0]["text"] == "Honey never spoils."
    # One server behind two upstream names offers the same tools twice.
    Agent(g, "/facts2", None).tools()
    g.proc.stop()
    events = spool_events(g.spool)
    changes = sorted((e["pin"]["change"], e["pin"]["tool"]) for e in events if e["kind"] == "pin_change")
    assert ("changed", "daily_fact") in changes and ("collision", "daily_fact") in changes and ("collision", "rug_pull") in changes, changes
    assert not [e for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "pins"], "nothing refused or hidden"


def test_a_policy_can_decide_on_a_changed_definition(gateway, servers, tmp_path):
    """With changes only logged, the policy sees `tool.pin_changed` and decides (here: deny with
    its own reason; `require_approval` holds the call for a reviewer the same way)."""
    _, facts = servers
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "allow"\n[[rule]]\nid = "changed-tools"\nwhen = \'method == "tools/call" && tool.pin_changed\'\n'
                      'action = "deny"\nreason = "this tool changed since it was reviewed; ask the platform team"\n')
    g = gateway([{"path": "/facts", "upstream": facts}], extra=f'[pins]\non_change = "log"\n[policy]\nfile = "{policy}"\n')
    a = Agent(g, "/facts", None)
    a.tools()
    assert a.call("daily_fact")["result"]["content"][0]["text"] == "Honey never spoils."
    a.call("rug_pull")
    assert "daily_fact" in a.tools(), "logged, so listed"
    err = a.call("daily_fact")["error"]
    assert err["code"] == -32009 and "ask the platform team" in err["data"]["reason"], err


def test_a_reviewed_baseline_catches_a_rug_pull_a_new_gateway_never_saw_and_hold_admits_only_accepted_tools(idp, gateway, servers, tmp_path):
    """Pins are per gateway and trusted on first sight: a gateway added to the fleet after a
    server's rug pull would pin the poisoned definition. With `pins.baseline` — the pins file
    of a gateway whose definitions were reviewed, the same on every gateway — it knows the
    reviewed one and catches the change. With `pins.first_sight = "hold"` a tool no pin knows
    is hidden and refused until a reviewer accepts it."""
    mail, facts = servers
    agent, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    routes = [{"path": "/mail", "upstream": mail, "name": "mail"}, {"path": "/facts", "upstream": facts, "name": "facts"}]
    reviewed_file = tmp_path / "reviewed" / "pins.json"
    first = gateway(routes, extra=identity_cfg(idp) + f'[pins]\nfile = "{reviewed_file}"\napprovers = ["finance"]\n', home="first")
    a = Agent(first, "/facts", agent)
    assert set(a.tools()) == {"daily_fact", "rug_pull"}
    Agent(first, "/mail", agent).tools()
    # The reviewer exports the reviewed pins through the admin API (no access to the host's
    # file needed); it reads like the pins file itself.
    exported = pins_cli(first, reviewer, "export")
    assert exported.returncode == 0, exported
    baseline = tmp_path / "baseline.json"
    baseline.write_text(exported.stdout)
    deadline = time.time() + 10
    while not reviewed_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert json.loads(exported.stdout)["upstreams"] == json.loads(reviewed_file.read_text())["upstreams"]

    # The rug pull happens before the new gateway ever meets the server.
    assert a.call("rug_pull")["result"]["content"][0]["text"] == "done"
    extra = identity_cfg(idp) + f'[pins]\nfile = "{tmp_path / "new" / "pins.json"}"\nbaseline = "{baseline}"\napprovers = ["finance"]\n'
    new = gateway(routes, extra=extra, home="new")
    a = Agent(new, "/facts", agent)
    assert set(a.tools()) == {"rug_pull"}, "the poisoned definition is not the reviewed one"
    assert a.call("daily_fact")["error"]["code"] == -32013
    assert new.metric("sluice_pins_changed") == 1
    changed = [e for e in spool_events(new.spool) if e["kind"] == "pin_change" and e["pin"]["change"] == "changed"]
    assert [e["pin"]["tool"] for e in changed] == ["daily_fact"], changed
    assert "follow the reviewed baseline" in new.proc.text()

    # Hold: nothing a review does not know passes until accepted.
    held = gateway(routes, extra=identity_cfg(idp) + '[pins]\nfirst_sight = "hold"\napprovers = ["finance"]\n', home="held")
    h = Agent(held, "/facts", agent)
    assert h.tools() == {} and h.call("rug_pull")["error"]["code"] == -32013
    accepted = pins_cli(held, reviewer, "accept", "u1", "rug_pull")
    assert accepted.returncode == 0, accepted
    assert set(h.tools()) == {"rug_pull"} and h.call("rug_pull")["result"]["content"][0]["text"] == "done"
    added = [(e["pin"]["tool"], e["gateway"]["detail"]) for e in spool_events(held.spool) if e["kind"] == "pin_change" and e["pin"]["change"] == "added"]
    assert sorted(t for t, _ in added) == ["(server instructions)", "daily_fact", "rug_pull"] and all("held" in d for _, d in added), added


def test_reviewers_are_told_of_a_rug_pull_by_webhook(gateway, servers, tmp_path):
    """A changed definition blocks the tool for every agent until someone accepts it, so the
    `[[approvals.notify]]` webhooks that ask for `pin_changed` are told at once: which tool of
    which upstream, whether it is blocked, and the command that accepts it."""
    from test_approvals import Webhook

    _, facts = servers
    hook = Webhook()
    (tmp_path / "hook.url").write_text(hook.url)
    extra = f'[[approvals.notify]]\nname = "security"\nurl_file = "{tmp_path / "hook.url"}"\non = ["pin_changed"]\n'
    g = gateway([{"path": "/facts", "upstream": facts, "name": "facts"}], extra=extra)
    a = Agent(g, "/facts", None)
    assert set(a.tools()) == {"daily_fact", "rug_pull"}
    time.sleep(0.5)
    assert hook.posts == [], "first sight is not news"
    assert a.call("rug_pull")["result"]["content"][0]["text"] == "done"
    assert set(a.tools()) == {"rug_pull"}
    [(_, _, note)] = hook.wait(1)
    assert note["step"] == "pin_changed" and note["source"] == "sluice", note
    pin = note["pin"]
    assert (pin["upstream"], pin["route"], pin["tool"], pin["change"], pin["blocked"]) == ("u0", "facts", "daily_fact", "changed", True), pin
    assert pin["accept"] == "sluice pins accept u0 daily_fact" and pin["old_digest"] != pin["new_digest"], pin
    a.tools()
    time.sleep(0.5)
    assert len(hook.posts) == 1, "told once, not at every listing"
