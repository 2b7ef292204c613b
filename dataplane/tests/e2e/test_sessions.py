"""Session ids: the agent holds the gateway's id for each MCP session (`GATEWAY_ID.TAG.UPSTREAM_ID`,
the tag a keyed hash over the route, the caller and both ids). Any gateway with the deployment's
`sessions.key_file` opens it, so a session continues on another gateway and after a restart,
under one gateway id in the record; an id altered, taken to another route, or never handed out
(the upstream's own) is refused like an unknown session."""

import json
import time

import httpx

from conftest import spool_events

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "sessions-e2e", "version": "1"}}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json", "mcp-protocol-version": "2025-06-18"}


def post(g, msg, sid=None, path="/mcp"):
    h = {**ACCEPT, **({"mcp-session-id": sid} if sid else {})}
    return httpx.post(g.url(path), json=msg, headers=h, timeout=10)


def call(n):
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "shout", "arguments": {"text": f"call {n}"}}}


def assert_unknown(r):
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["error"]["code"] == -32600 and "start one with initialize" in body["error"]["data"]["reason"], body


def key_cfg(tmp_path):
    key = tmp_path / "session.key"
    if not key.exists():
        key.write_bytes(bytes(range(48)))
    return f'[sessions]\nkey_file = "{key}"\n'


def test_session_ids_are_the_gateways_and_refused_when_altered_or_moved(py_json, gateway):
    g = gateway([{"path": "/mcp", "upstream": py_json, "name": "tools"}, {"path": "/other", "upstream": py_json, "name": "other"}])
    r = post(g, INIT)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    gid, tag, upstream_sid = sid.split(".", 2)
    assert len(gid) == 26 and len(tag) == 26 and upstream_sid, sid
    [s] = g.get_admin("/sessions")["sessions"]
    assert (s["gateway_id"], s["mcp_session_id"]) == (gid, upstream_sid), s
    assert post(g, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid).status_code == 202
    r = post(g, LIST, sid)
    assert r.status_code == 200 and r.json()["result"]["tools"], r.text

    # The upstream's own id was never handed out; an id altered in its tag, its gateway id or
    # its upstream id, or taken to another route, opens nothing.
    flip = lambda c: "0" if c != "0" else "1"  # noqa: E731
    altered = [
        upstream_sid,
        f"{gid}.{tag[:-1]}{flip(tag[-1])}.{upstream_sid}",
        f"{gid[:-1]}{flip(gid[-1])}.{tag}.{upstream_sid}",
        f"{gid}.{tag}.{upstream_sid}x",
        f"{gid}.{tag}",
    ]
    for bad in altered:
        assert_unknown(post(g, LIST, bad))
    assert_unknown(post(g, LIST, sid, path="/other"))
    # Nor may an altered id end the session.
    r = httpx.delete(g.url(), headers={**ACCEPT, "mcp-session-id": altered[1]}, timeout=10)
    assert r.status_code == 404
    assert post(g, LIST, sid).status_code == 200, "the session is untouched"

    g.proc.stop()
    events = spool_events(g.spool)
    refused = [e for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert len(refused) == len(altered) + 2 and all(e["status"] == 404 and "session" not in e for e in refused), refused
    mine = [e for e in events if e.get("session") == gid]
    assert [e["kind"] for e in mine].count("session_start") == 1, mine
    assert sum(e["kind"] == "request" and e.get("method") == "tools/list" for e in mine) == 2, "only the two accepted listings"
    assert {e["mcp_session"] for e in mine if e.get("mcp_session")} == {upstream_sid}, "the record names the upstream's id"


def test_a_session_continues_on_another_gateway_and_after_a_restart_with_the_shared_key(py_json, gateway, tmp_path):
    routes = [{"path": "/mcp", "upstream": py_json, "name": "tools"}]
    a = gateway(routes, key_cfg(tmp_path), home="a")
    b = gateway(routes, key_cfg(tmp_path), home="b")
    c = gateway(routes, home="c")  # no key file: ids of its own, valid until it restarts
    r = post(a, INIT)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    gid, _, upstream_sid = sid.split(".", 2)
    assert post(a, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid).status_code == 202

    # Another gateway of the deployment takes the session up under the same gateway id.
    r = post(b, call(3), sid)
    assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "CALL 3", r.text
    assert r.headers.get("mcp-session-id") in (None, sid)
    [s] = b.get_admin("/sessions")["sessions"]
    assert (s["gateway_id"], s["mcp_session_id"]) == (gid, upstream_sid), s
    # One without the key does not open it.
    assert_unknown(post(c, call(4), sid))

    # A restart: the session goes on, and its events keep its id.
    a.restart()
    r = post(a, call(5), sid)
    assert r.status_code == 200, r.text
    # Without a key file, the ids a gateway handed out end with its process.
    r = post(c, INIT)
    c_sid = r.headers["mcp-session-id"]
    assert post(c, LIST, c_sid).status_code == 200
    c.restart()
    assert_unknown(post(c, LIST, c_sid))

    for g in (a, b):
        g.proc.stop()
    a_events, b_events = spool_events(a.spool), spool_events(b.spool)
    assert [e["kind"] for e in a_events if e.get("session") == gid].count("session_start") == 1
    for events, n in [(b_events, 3), (a_events, 5)]:
        calls = [e for e in events if e["kind"] == "request" and e.get("method") == "tools/call"]
        assert [(e["session"], e["mcp_session"], e["rpc_id"]) for e in calls] == [(gid, upstream_sid, str(n))], calls
    assert not any(e["kind"] == "session_start" for e in b_events), "taken up, not started again"
    assert "session continued here" in b.proc.log.read_text()


def test_a_key_rotation_keeps_open_sessions_until_the_previous_key_is_removed(py_json, gateway, tmp_path):
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    old.write_bytes(b"o" * 32)
    new.write_bytes(b"n" * 32)
    g = gateway([{"path": "/mcp", "upstream": py_json, "name": "tools"}], f'[sessions]\nkey_file = "{old}"\n')
    before = post(g, INIT).headers["mcp-session-id"]
    assert post(g, LIST, before).status_code == 200
    # Rotate: the new key mints, the old one still opens.
    g.config.write_text(g.config.read_text().replace(f'key_file = "{old}"', f'key_file = "{new}"\nprevious_key_file = "{old}"'))
    g.restart()
    assert post(g, LIST, before).status_code == 200, "a session opened before the rotation goes on"
    after = post(g, INIT).headers["mcp-session-id"]
    assert after.split(".")[1] != before.split(".")[1]
    # Once the previous key is removed, only ids of the new key open.
    g.config.write_text(g.config.read_text().replace(f'\nprevious_key_file = "{old}"', ""))
    g.restart()
    assert_unknown(post(g, LIST, before))
    assert post(g, LIST, after).status_code == 200


def test_one_caller_cannot_fill_the_session_store(py_json, gateway):
    """`sessions.max_per_caller`: past it a caller's `initialize` is refused (429, -32010,
    saying how to end sessions) before the upstream makes a session — one agent opening
    sessions in a loop would otherwise fill the store and evict every other caller's sessions,
    resetting what the policy knows of them. Other callers are unaffected; a session ended with
    DELETE makes room again."""
    import hashlib

    keys = {"loop-agent": "sk-loop-1f2e", "other-agent": "sk-other-9a8b"}
    ident = "[identity]\n" + "".join(f'[[identity.api_key]]\nsubject = "{s}"\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n' for s, k in keys.items())
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=ident + "[sessions]\nmax_per_caller = 3\n")

    def init(who):
        return httpx.post(g.url(), json=INIT, headers={**ACCEPT, "x-api-key": keys[who]}, timeout=10)

    opened = [init("loop-agent") for _ in range(3)]
    assert all(r.status_code == 200 for r in opened), [r.text for r in opened]
    refused = init("loop-agent")
    assert refused.status_code == 429, refused.text
    err = refused.json()["error"]
    assert refused.json()["id"] == 1 and err["code"] == -32010, err
    assert "holds 3 open sessions" in err["data"]["reason"] and "DELETE" in err["data"]["reason"], err
    assert init("other-agent").status_code == 200, "another caller is not affected"
    assert len([s for s in g.get_admin("/sessions")["sessions"] if s["owner"] == "loop-agent"]) == 3
    sid = opened[0].headers["mcp-session-id"]
    gone = httpx.delete(g.url(), headers={**ACCEPT, "x-api-key": keys["loop-agent"], "mcp-session-id": sid}, timeout=10)
    assert gone.status_code in (200, 204), gone.text
    assert init("loop-agent").status_code == 200, "room again after a DELETE"
    refusals = [e for e in spool_events(g.spool) if e["kind"] == "decision" and "max_per_caller" in (e["decision"].get("reason") or "")]
    assert refusals and refusals[0]["identity"]["subject"] == "loop-agent", refusals


def test_one_caller_cannot_fill_the_session_store_over_legacy_http_sse(py_legacy, gateway):
    """The legacy transport opens a session with a GET of its stream, not an `initialize`:
    the same share holds — past it the stream is refused (429, -32010) before the upstream
    makes a session, other callers are unaffected, and closing a stream makes room."""
    import hashlib

    keys = {"loop-agent": "sk-loop-1f2e", "other-agent": "sk-other-9a8b"}
    ident = "[identity]\n" + "".join(f'[[identity.api_key]]\nsubject = "{s}"\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n' for s, k in keys.items())
    g = gateway([{"path": "/legacy", "upstream": py_legacy}], extra=ident + "[sessions]\nmax_per_caller = 2\n")
    owned = lambda who: len([s for s in g.get_admin("/sessions")["sessions"] if s["owner"] == who])

    def open_stream(c, who):
        s = c.stream("GET", g.url("/legacy/sse"), headers={"accept": "text/event-stream", "x-api-key": keys[who]})
        r = s.__enter__()
        if r.status_code == 200:
            # The lines' iterator is kept: dropping it would close the stream.
            r.lines = r.iter_lines()
            assert next(line for line in r.lines if line.startswith("data: ")).startswith("data: /legacy/messages/")
        return s, r

    with httpx.Client(timeout=10) as c:
        held = [open_stream(c, "loop-agent") for _ in range(2)]
        assert [r.status_code for _, r in held] == [200, 200]
        assert owned("loop-agent") == 2, g.get_admin("/sessions")
        refused_ctx, refused = open_stream(c, "loop-agent")
        refused.read()
        refused_ctx.__exit__(None, None, None)
        assert refused.status_code == 429, refused.text
        err = refused.json()["error"]
        assert err["code"] == -32010 and "holds 2 open sessions" in err["data"]["reason"] and "closing its stream" in err["data"]["reason"], err
        assert owned("loop-agent") == 2, "no session was made for the refused stream"
        other_ctx, other = open_stream(c, "other-agent")
        assert other.status_code == 200, "another caller is not affected"
        other_ctx.__exit__(None, None, None)
        held[0][0].__exit__(None, None, None)
        for _ in range(50):
            if owned("loop-agent") == 1:
                break
            time.sleep(0.1)
        again_ctx, again = open_stream(c, "loop-agent")
        assert again.status_code == 200, "room again once a stream closed"
        again_ctx.__exit__(None, None, None)
        held[1][0].__exit__(None, None, None)


def test_sessions_continued_from_another_gateway_count_against_the_callers_share(py_json, gateway, tmp_path):
    """A session opened on another gateway of the deployment (or before a restart) is taken up
    here when it is next used — and counted against `sessions.max_per_caller` like one opened
    here: a caller cannot fill one gateway's store with sessions opened on the others."""
    import hashlib

    key = "sk-roam-5d1c"
    ident = f'[identity]\n[[identity.api_key]]\nsubject = "roamer"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
    extra = ident + key_cfg(tmp_path) + "max_per_caller = 2\n"
    routes = [{"path": "/mcp", "upstream": py_json, "name": "tools"}]
    a, b = gateway(routes, extra, home="a"), gateway(routes, extra, home="b")
    h = {**ACCEPT, "x-api-key": key}
    opened = [httpx.post(a.url(), json=INIT, headers=h, timeout=10) for _ in range(2)]
    assert all(r.status_code == 200 for r in opened), [r.text for r in opened]
    sids = [r.headers["mcp-session-id"] for r in opened]
    for sid in sids:
        assert httpx.post(a.url(), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**h, "mcp-session-id": sid}, timeout=10).status_code == 202
    here = httpx.post(b.url(), json=INIT, headers=h, timeout=10)
    assert here.status_code == 200, here.text
    first = httpx.post(b.url(), json=call(3), headers={**h, "mcp-session-id": sids[0]}, timeout=10)
    assert first.status_code == 200, "continued: the caller holds two here now"
    refused = httpx.post(b.url(), json=call(4), headers={**h, "mcp-session-id": sids[1]}, timeout=10)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == -32010, refused.text
    assert len(b.get_admin("/sessions")["sessions"]) == 2
    assert httpx.post(a.url(), json=call(5), headers={**h, "mcp-session-id": sids[1]}, timeout=10).status_code == 200, "still open where it was"
