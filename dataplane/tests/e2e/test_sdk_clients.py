"""The official MCP SDK clients see the same results straight from a server and through Sluice,
and the gateway's own view (sessions, metrics) matches what happened."""

import json
import socket
import time

import httpx

from conftest import LOG_ONLY, py_client, spool_events, ts_client
from test_recording import settled

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw-e2e", "version": "0.1"}},
}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def test_typescript_client_same_results_direct_and_through_gateway(everything, gateway):
    g = gateway([{"path": "/mcp", "upstream": everything}], extra=LOG_ONLY)
    direct = ts_client(everything)
    through = ts_client(g.url())
    assert direct["progress"] == [[1, 4], [2, 4], [3, 4], [4, 4]]
    assert "sampled: " in json.dumps(direct["sampling"])
    assert through == direct
    assert through["terminated"] is True
    # The session was tracked while open and released by the client's DELETE.
    assert g.metric("sluice_requests_total", method="DELETE", status="200") == 1
    assert g.get_admin("/sessions")["count"] == 0
    assert g.metric("sluice_messages_total", direction="response", kind="request") >= 2  # sampling + elicitation asks
    # Detection ran on the real traffic (log only here): the e-mail address the client
    # entered in the elicitation form came back in a tool result.
    assert g.metric("sluice_findings_total", direction="response", kind="email", action="log") >= 1


def test_python_client_over_legacy_http_sse(py_legacy, gateway):
    """The legacy HTTP+SSE transport (MCP 2024-11-05) through the gateway: the stream's
    `endpoint` event is rewritten to lead back through the route, the client's posts and the
    stream's answers (progress, elicitation and sampling included) are one session, recorded
    with each call's tool, and the session ends with the stream."""
    g = gateway([{"path": "/legacy", "upstream": py_legacy}], extra=LOG_ONLY)
    direct = py_client(py_legacy + "/sse", "py", "--legacy", "--interactive")
    through = py_client(g.url("/legacy/sse"), "py", "--legacy", "--interactive")
    for run in (direct, through):
        p = run.pop("progress")
        assert p == sorted(p) and all(total == 3.0 for _, total in p), p
    assert through == direct
    assert direct["add"]["content"][0]["text"] == "42" and direct["elicit"]["content"][0]["text"] == "accept:Ada"
    settled(g)
    events = spool_events(g.spool)
    assert len({e["session"] for e in events if e.get("session")}) == 1, "posts and stream are one session"
    kinds = [e["kind"] for e in events]
    assert kinds.count("session_start") == 1 and kinds.count("session_end") == 1, kinds
    calls = sorted(e["tool"] for e in events if e["kind"] == "response" and e.get("method") == "tools/call")
    assert calls == ["add", "ask_name", "count", "fail", "shout", "summarize"], calls


def test_typescript_client_over_legacy_http_sse(everything_legacy, gateway):
    """The TypeScript SDK's legacy transport (`?sessionId=`) against the reference server:
    the same results straight and through the gateway, sampling and elicitation included."""
    g = gateway([{"path": "/legacy", "upstream": everything_legacy}], extra=LOG_ONLY)
    direct = ts_client(everything_legacy + "/sse", "--legacy")
    through = ts_client(g.url("/legacy/sse"), "--legacy")
    # Over this transport the last progress notice races with the result, straight or not.
    for run in (direct, through):
        p = run.pop("progress")
        assert p == sorted(p) and len(p) >= 3 and all(total == 4 for _, total in p), p
    assert "sampled: " in json.dumps(direct["sampling"])
    assert through == direct
    assert g.metric("sluice_messages_total", direction="response", kind="request") >= 2  # sampling + elicitation asks


def test_legacy_session_holds_client_and_server_info_while_its_stream_is_open(py_legacy, gateway):
    """A legacy session is opened by its stream, before the client says who it is: the
    `initialize` post and its answer on the stream fill in the client's and server's info."""
    g = gateway([{"path": "/legacy", "upstream": py_legacy}])
    with httpx.Client(timeout=10) as c, c.stream("GET", g.url("/legacy/sse"), headers={"accept": "text/event-stream"}) as stream:
        lines = stream.iter_lines()
        endpoint = next(line for line in lines if line.startswith("data: "))[6:]
        assert endpoint.startswith("/legacy/messages/?session_id="), endpoint
        assert c.post(g.url(endpoint), json=INIT).status_code == 202
        answer = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert answer["result"]["serverInfo"]["name"] == "sluice-e2e-py", answer
        s = g.get_admin("/sessions")["sessions"]
        assert [x["mcp_session_id"] for x in s] == [endpoint.split("=")[1]], s
        assert s[0]["client_info"]["name"] == "raw-e2e" and s[0]["server_info"]["name"] == "sluice-e2e-py", s
        assert s[0]["protocol_version"] == "2025-06-18", s
    # The stream closed: the session ended with it.
    for _ in range(50):
        if g.get_admin("/sessions")["count"] == 0:
            break
        time.sleep(0.1)
    assert g.get_admin("/sessions")["count"] == 0


def test_python_client_against_both_servers(everything, py_json, py_sse, gateway):
    g = gateway([
        {"path": "/everything", "upstream": everything},
        {"path": "/pyjson", "upstream": py_json},
        {"path": "/pysse", "upstream": py_sse},
    ], extra=LOG_ONLY)
    for upstream, path, server, flags in [
        (everything, "/everything", "everything", ()),
        (py_json, "/pyjson", "py", ()),
        (py_sse, "/pysse", "py", ("--interactive",)),
    ]:
        direct = py_client(upstream, server, *flags)
        through = py_client(g.url(path), server, *flags)
        if server == "py":
            # The Python SDK server sends progress on the standalone GET stream, which races
            # with the call's own response on another connection, straight or not: compare
            # what was seen, not how many arrived before the result.
            for run in (direct, through):
                p = run.pop("progress")
                assert p == sorted(p) and all(total == 3.0 for _, total in p), p
        assert through == direct, path
        assert direct["session"] is True
    assert direct["elicit"]["content"][0]["text"] == "accept:Ada"
    assert direct["sample"]["content"][0]["text"] == "summary=short"
    assert direct["count"]["content"][0]["text"] == "counted to 3"


def test_session_record_holds_client_and_server_info(py_json, gateway):
    g = gateway([{"path": "/mcp", "upstream": py_json}])
    with httpx.Client(timeout=10) as c:
        r = c.post(g.url(), json=INIT, headers=ACCEPT)
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]
        s = g.get_admin("/sessions")["sessions"]
        assert len(s) == 1
        # The agent holds the gateway's id for the session, which names the upstream's.
        assert sid.startswith(s[0]["gateway_id"] + ".") and sid.endswith("." + s[0]["mcp_session_id"]), (sid, s)
        assert s[0]["client_info"]["name"] == "raw-e2e"
        assert s[0]["server_info"]["name"] == "sluice-e2e-py"
        assert s[0]["protocol_version"] == "2025-06-18"
        assert len(s[0]["gateway_id"]) == 26
        r = c.delete(g.url(), headers={**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"})
        assert r.status_code == 200
        assert g.get_admin("/sessions")["count"] == 0
        # The upstream no longer knows the session: its 404 passes through unchanged.
        r = c.post(g.url(), json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers={**ACCEPT, "mcp-session-id": sid})
        assert r.status_code == 404


def _sse_events(raw: str):
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        ev = {}
        for line in block.split("\n"):
            if ":" in line and not line.startswith(":"):
                k, v = line.split(":", 1)
                ev.setdefault(k, []).append(v[1:] if v.startswith(" ") else v)
        if ev:
            events.append(ev)
    return events


def test_sse_resumption_and_byte_exact_events(raw_upstream, gateway):
    """SSE `id:`/`retry:` lines, comments and event bytes reach the agent unchanged, event by
    event, and a GET with Last-Event-ID resumes from the upstream's replay. (The reference
    server's in-memory event store did not replay a dropped POST stream even when called
    straight, so the upstream here replays from a fixed event log.)"""
    log = [json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p", "progress": i, "total": 4}})
           for i in range(1, 5)] + [json.dumps({"jsonrpc": "2.0", "id": 9, "result": {"content": []}})]

    def handler(conn, head, body):
        last = None
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"last-event-id:"):
                last = int(line.split(b":")[1])
        start = 0 if last is None else last + 1
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(start, len(log)):
            ev = (f"retry: 3000\n" if i == start else "") + f": note {i}\nevent: message\nid: {i}\ndata: {log[i]}\n\n"
            ev = ev.encode()
            conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
            time.sleep(0.05)
        conn.sendall(b"0\r\n\r\n")

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    with httpx.Client(timeout=10) as c:
        call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
        r = c.post(g.url(), json=call, headers=ACCEPT)
        full = r.text
        events = _sse_events(full)
        assert [e["id"][0] for e in events] == ["0", "1", "2", "3", "4"]
        assert events[0]["retry"] == ["3000"] and full.count(": note") == 5
        with c.stream("POST", g.url(), json=call, headers=ACCEPT) as s:
            first = next(s.iter_text())
        assert first.startswith("retry: 3000\n: note 0\nevent: message\nid: 0\n"), "each event is sent as soon as it is complete"
        r = c.get(g.url(), headers={"accept": "text/event-stream", "last-event-id": "1"})
        replay = _sse_events(r.text)
        assert [e["id"][0] for e in replay] == ["2", "3", "4"]
        assert json.loads(replay[-1]["data"][0])["id"] == 9
    assert b"last-event-id: 1" in up.requests[-1].lower()
    # 4 + 2 from the complete streams; the one the agent dropped after its first event stops
    # being relayed at once (and its upstream connection is closed).
    assert 7 <= g.metric("sluice_messages_total", direction="response", kind="notification") < 10


def test_headers_pass_through_and_forwarding_added(raw_upstream, gateway):
    def handler(conn, head, body):
        payload = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: up-1\r\nX-Upstream: yes\r\nKeep-Alive: timeout=5\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)

    up = raw_upstream(handler)
    # The web client's origin and the gateway's name are listed (others are refused:
    # test_conformance, test_rebinding).
    g = gateway([{"path": "/mcp", "upstream": up.url()}], gateway_keys='allowed_origins = ["https://app.example"]\nallowed_hosts = ["agents.example"]\n')
    # The agent holds the gateway's session id for the upstream's "up-1" (test_sessions).
    sid = httpx.post(g.url(), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"accept": "application/json, text/event-stream"}, timeout=10).headers["mcp-session-id"]
    assert sid.endswith(".up-1") and len(sid) > len("up-1") + 50, sid
    up.requests.clear()
    with socket.create_connection(("127.0.0.1", g.port)) as s:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
        s.sendall(b"POST /mcp?x=1 HTTP/1.1\r\nHost: agents.example:443\r\nOrigin: https://app.example\r\nAccept: application/json, text/event-stream\r\n"
                  + f"Mcp-Session-Id: {sid}\r\n".encode() + b"MCP-Protocol-Version: 2025-11-25\r\nLast-Event-ID: e-7\r\nConnection: keep-alive, X-Secret-Hop\r\n"
                  b"X-Secret-Hop: 1\r\nProxy-Authorization: Basic eA==\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        resp = b""
        while b'"result"' not in resp:
            got = s.recv(65536)
            assert got, resp
            resp += got
    sent = up.requests[0].decode()
    head = sent.split("\r\n\r\n")[0].lower()
    assert sent.startswith("POST /mcp?x=1 HTTP/1.1")
    for must in ["host: agents.example:443", "mcp-session-id: up-1", "mcp-protocol-version: 2025-11-25",
                 "last-event-id: e-7", "x-forwarded-for: 127.0.0.1", "forwarded: for=127.0.0.1;proto=http;host=\"agents.example:443\"",
                 f"content-length: {len(body)}"]:
        assert must in head, (must, head)
    # Origin was the gateway's to check (test_cors): an upstream checking it again against a list
    # of its own would refuse the web clients the gateway serves.
    for never in ["x-secret-hop", "proxy-authorization", "transfer-encoding", "origin:"]:
        assert never not in head, never
    assert sent.endswith(body.decode())
    rhead = resp.split(b"\r\n\r\n")[0].decode().lower()
    assert f"mcp-session-id: {sid.lower()}" in rhead.split("\r\n") and "x-upstream: yes" in rhead and "keep-alive: timeout" not in rhead


def test_answers_piling_up_for_an_unread_legacy_stream_are_bounded(py_legacy, gateway, tmp_path):
    """Over the legacy transport the gateway's own answers (refusals) wait for the session's
    stream. A client that posts without reading it must not make them pile up without end:
    past 1 MiB waiting, the post is refused with 503/-32012 and what to do, nothing of it
    forwarded; the next post that fits is queued and answered on the stream as usual."""
    (tmp_path / "policy.toml").write_text('default = "allow"\n[[rule]]\nid = "no-nope"\nwhen = \'tool.name == "nope"\'\naction = "deny"\nreason = "nope is not for agents"\n')
    g = gateway([{"path": "/legacy", "upstream": py_legacy}], extra=f'[policy]\nfile = "{tmp_path / "policy.toml"}"\n')
    denied = lambda i: {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}
    with httpx.Client(timeout=30) as c, c.stream("GET", g.url("/legacy/sse"), headers={"accept": "text/event-stream"}) as stream:
        lines = stream.iter_lines()
        endpoint = next(line for line in lines if line.startswith("data: "))[6:]
        assert c.post(g.url(endpoint), json=INIT).status_code == 202
        assert "serverInfo" in next(line for line in lines if line.startswith("data: "))
        # 10,000 refusals in one batch: more than 1 MiB of answers for the stream.
        r = c.post(g.url(endpoint), json=[denied(i) for i in range(100, 10100)])
        err = r.json()["error"]
        assert (r.status_code, err["code"]) == (503, -32012) and "read the stream" in err["data"]["reason"], r.text[:400]
        r = c.post(g.url(endpoint), json=denied(7))
        assert r.status_code == 202, r.text
        answer = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert answer["id"] == 7 and "nope is not for agents" in answer["error"]["data"]["reason"], answer
