"""Faults and bad input: every failure gets a clear HTTP status and JSON-RPC error, streams end
cleanly, no upstream connection leaks, slow clients are cut off without hurting others, and a
broken config on SIGHUP leaves the running one in force."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import httpx

from conftest import SLUICE, free_port, spool_events, wait_ready_at
from test_recording import settled


ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
PING = {"jsonrpc": "2.0", "id": "p-1", "method": "ping"}
SECRET = "AKIAQYLPMN5HFIQR7XQB"


def json_ok(conn, head, body):
    payload = json.dumps({"jsonrpc": "2.0", "id": "p-1", "result": {}}).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)


def echo_id(conn, head, body):
    """An upstream answering each call, by its id, with an empty result."""
    out = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {"content": []}}).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)


def test_upstream_refused_is_502_with_jsonrpc_error(gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connections are refused
        g = gateway([{"path": "/mcp", "upstream": f"http://127.0.0.1:{dead}/mcp"}])
        r = httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=10)
    assert r.status_code == 502
    err = r.json()
    assert err["id"] == "p-1"
    assert err["error"]["code"] == -32001
    assert "cannot be reached" in err["error"]["data"]["reason"]
    # The record has the call and the answer the gateway gave in the upstream's place.
    settled(g)
    events = [e for e in spool_events(g.spool) if e["kind"] in ("request", "response")]
    assert [(e["kind"], e.get("method"), e.get("rpc_id"), e.get("status"), e.get("error_code")) for e in events] == [
        ("request", "ping", '"p-1"', None, None), ("response", "ping", '"p-1"', 502, -32001)], events
    assert "cannot be reached" in events[1]["payload"]["data"]["reason"] and events[1]["latency_us"] > 0, events[1]


def test_upstream_hang_is_504(raw_upstream, gateway):
    up = raw_upstream(lambda conn, head, body: time.sleep(5))
    g = gateway([{"path": "/mcp", "upstream": up.url()}, {"path": "/api", "upstream": up.url("/api"), "kind": "http"}],
                extra='[timeouts]\nupstream_first_byte = "500ms"\n')
    t = time.time()
    r = httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=10)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == -32002
    assert time.time() - t < 4
    assert g.metric("sluice_timeouts_total") >= 1
    # On a plain HTTP route too; both answers are in the record as the agent got them.
    assert httpx.get(g.url("/api/slow?x=1"), timeout=10).status_code == 504
    settled(g)
    answers = [(e["kind"], e.get("http_path"), e["status"], e["error_code"]) for e in spool_events(g.spool) if e.get("direction") == "response"]
    assert answers == [("response", None, 504, -32002), ("document", "/api/slow?x=1", 504, -32002)], answers


def test_upstream_closing_mid_sse_ends_the_stream(raw_upstream, gateway):
    def handler(conn, head, body):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        ev = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}\n\n'
        conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
        conn.sendall(b"40\r\nevent: message\ndata: {\"jsonrpc\"")  # cut in the middle of a chunk
        # the handler returns and the connection closes

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    got = b""
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        body = json.dumps(PING).encode()
        s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    text = got.decode()
    assert "notifications/progress" in text, "the complete event was relayed"
    assert '{"jsonrpc"\n' not in text and text.count("data:") == 1, "the partial event was not"
    assert not text.endswith("0\r\n\r\n"), "the agent can tell the stream was cut (no clean last chunk)"
    # The gateway keeps serving, and counted the broken stream as an upstream problem.
    assert g.get_admin("/readyz")["ready"] is True
    assert g.await_metric("sluice_requests_total", 1, status="200") == 1


def test_client_disconnect_mid_stream_closes_upstream(raw_upstream, gateway):
    upstream_saw_close = threading.Event()

    def handler(conn, head, body):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        ev = b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"tick"}}\n\n'
        conn.settimeout(0.2)
        for _ in range(200):
            try:
                conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
            except OSError:
                upstream_saw_close.set()
                return
            try:
                if conn.recv(1) == b"":
                    upstream_saw_close.set()
                    return
            except socket.timeout:
                pass

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], workers=1)
    with httpx.Client(timeout=10) as c:
        with c.stream("GET", g.url(), headers={"accept": "text/event-stream"}) as s:
            it = s.iter_text()
            assert "tick" in next(it)
            assert g.metric("sluice_active_streams") == 1
    assert upstream_saw_close.wait(5), "the gateway closed its upstream connection"
    end = time.time() + 5
    while g.metric("sluice_active_streams") != 0 and time.time() < end:
        time.sleep(0.05)
    assert g.metric("sluice_active_streams") == 0


def test_slow_loris_is_cut_off_and_others_are_served(raw_upstream, gateway):
    up = raw_upstream(json_ok)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra='[timeouts]\nclient_header = "1s"\n', workers=1)
    slow = socket.create_connection(("127.0.0.1", g.port))
    slow.sendall(b"POST /mcp HTTP/1.1\r\n")
    t = time.time()
    # While the slow client trickles its head, a normal client is served on the same worker.
    for _ in range(3):
        assert httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=5).status_code == 200
    got = b""
    try:
        for _ in range(30):
            slow.sendall(b"X")
            time.sleep(0.1)
            slow.settimeout(0.01)
            try:
                got += slow.recv(4096)
            except socket.timeout:
                pass
            if got:
                break
    except OSError:
        pass
    slow.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert time.time() - t < 3.5


def test_bad_input_gets_clear_errors(raw_upstream, gateway):
    up = raw_upstream(json_ok)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra="[limits]\nmax_body_bytes = 2048\nmax_head_bytes = 1024\n")
    with httpx.Client(timeout=5) as c:
        r = c.post(g.url(), content=b'{"jsonrpc":"2.0",', headers=ACCEPT)
        assert (r.status_code, r.json()["error"]["code"]) == (400, -32700)
        r = c.post(g.url(), content=b'{"jsonrpc":"1.0","id":1,"method":"x"}', headers=ACCEPT)
        assert (r.status_code, r.json()["error"]["code"]) == (400, -32600)
        assert "jsonrpc" in r.json()["error"]["data"]["reason"]
        r = c.post(g.url(), content=b"[]", headers=ACCEPT)
        assert "empty batch" in r.json()["error"]["data"]["reason"]
        r = c.post(g.url(), content=b"", headers=ACCEPT)
        assert r.status_code == 400
        r = c.post(g.url(), content=b"x" * 5000, headers=ACCEPT)
        assert (r.status_code, r.json()["error"]["code"]) == (413, -32003)
    with httpx.Client(timeout=5) as c:
        r = c.post(g.url(), json=PING, headers={**ACCEPT, "x-big": "y" * 2000})
        assert r.status_code == 431
    with httpx.Client(timeout=5) as c:
        r = c.post(g.url(f"/nothing-here/{SECRET}"), json=PING, headers=ACCEPT)
        assert (r.status_code, r.json()["error"]["code"]) == (404, -32005)
    # Smuggling shapes are refused outright.
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert len(up.requests) == 0, "nothing invalid reached the upstream"
    # Expect: 100-continue is answered before the body is sent.
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        body = json.dumps(PING).encode()
        s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode())
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert b"expect" not in up.requests[-1].lower()
    # Every refusal is in the record: what was wrong, the status and code the client got, from
    # where — and nothing the client sent that no stage inspected (the path held a key).
    settled(g)
    events = spool_events(g.spool)
    refused = [e for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert [(e["status"], e["error_code"]) for e in refused] == [
        (400, -32700), (400, -32600), (400, -32600), (400, -32600), (413, -32003), (431, -32600), (404, -32005), (400, -32600)], refused
    assert all(e["decision"]["action"] == "refuse" and e["client_ip"] == "127.0.0.1" and "session" not in e for e in refused), refused
    # Routed ones name their route; the parse error's record does not quote the body.
    assert [e.get("route") for e in refused] == ["r0"] * 5 + [None, None, "r0"], refused
    assert refused[0]["decision"]["reason"] == "the body is not JSON the gateway can read", refused[0]
    assert refused[6]["decision"]["reason"] == "no route matches the request path", refused[6]
    assert SECRET not in json.dumps(events)


def test_batch_messages_are_classified_each(raw_upstream, gateway):
    def handler(conn, head, body):
        items = json.loads(body)
        payload = json.dumps([{"jsonrpc": "2.0", "id": m["id"], "result": {}} for m in items if "id" in m]).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}},
             {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}},
             {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "file:///x"}}]
    r = httpx.post(g.url(), json=batch, headers=ACCEPT, timeout=5)
    assert [m["id"] for m in r.json()] == [1, 2]
    assert g.metric("sluice_messages_total", direction="request", kind="request") == 2
    assert g.metric("sluice_messages_total", direction="request", kind="notification") == 1
    assert g.metric("sluice_messages_total", direction="response", kind="response") == 2


def test_sighup_with_broken_config_keeps_serving_and_good_one_applies(raw_upstream, gateway):
    up = raw_upstream(json_ok)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    good = g.config.read_text()
    g.config.write_text(good + "\n[[route]]\npath = \"nope\"\nupstream = \"missing\"\n")
    g.proc.p.send_signal(signal.SIGHUP)
    end = time.time() + 20
    while g.metric("sluice_config_reload_failures_total") < 1 and time.time() < end:
        time.sleep(0.05)
    assert g.metric("sluice_config_reload_failures_total") == 1
    assert httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=5).status_code == 200
    log = g.proc.text()
    assert "route[1].path" in log and "route[1].upstream" in log, "every problem is logged"
    # A valid config moves the route.
    g.config.write_text(good.replace('path = "/mcp"', 'path = "/v2/mcp"'))
    g.proc.p.send_signal(signal.SIGHUP)
    end = time.time() + 20
    while g.metric("sluice_config_reloads_total") < 1 and time.time() < end:
        time.sleep(0.05)
    assert httpx.post(g.url("/v2/mcp"), json=PING, headers=ACCEPT, timeout=5).status_code == 200
    assert httpx.post(g.url("/mcp"), json=PING, headers=ACCEPT, timeout=5).status_code == 404


def test_sigterm_lets_in_flight_stream_finish(raw_upstream, gateway):
    def handler(conn, head, body):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(5):
            ev = f'data: {{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progress":{i}}}}}\n\n'.encode()
            conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
            time.sleep(0.2)
        ev = b'data: {"jsonrpc":"2.0","id":"p-1","result":{}}\n\n'
        conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n0\r\n\r\n")

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    with httpx.Client(timeout=10) as c:
        with c.stream("POST", g.url(), json=PING, headers=ACCEPT) as s:
            it = s.iter_text()
            buf = next(it)
            g.proc.p.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            # No new connections are accepted while draining...
            try:
                refused = httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=2).status_code != 200
            except httpx.HTTPError:
                refused = True
            assert refused
            # ...but the open stream runs to its end.
            for chunk in it:
                buf += chunk
    assert '"id":"p-1"' in buf and buf.count('"progress":') == 5
    assert g.proc.p.wait(10) == 0


def test_stream_idle_and_keepalive_idle_timeouts(raw_upstream, gateway):
    def handler(conn, head, body):
        if head.startswith(b"GET"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            ev = b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}\n\n'
            conn.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
            time.sleep(5)  # then silence, longer than stream_idle
        else:
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\n\r\n")

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}],
                extra='[timeouts]\nstream_idle = "700ms"\nidle_keepalive = "500ms"\n', workers=1)
    t = time.time()
    with httpx.Client(timeout=10) as c:
        with c.stream("GET", g.url(), headers={"accept": "text/event-stream"}) as s:
            got = ""
            try:
                for chunk in s.iter_text():
                    got += chunk
            except httpx.HTTPError:
                pass  # the gateway ends a silent stream by closing it
    assert '"data":"x"' in got
    assert 0.6 < time.time() - t < 4
    assert g.metric("sluice_timeouts_total") >= 1
    # Status codes pass through (405 from a server without DELETE support, say).
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"DELETE /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        resp = s.recv(4096)
        assert resp.startswith(b"HTTP/1.1 405") and b"Allow: GET" in resp
        # The keep-alive connection is closed after idle_keepalive without a new request.
        t = time.time()
        s.settimeout(5)
        assert s.recv(4096) == b""
        assert 0.3 < time.time() - t < 3


def _head(conn: socket.socket, timeout=5.0) -> bytes:
    """Everything the gateway sends on `conn` until it closes it or stops for `timeout`."""
    conn.settimeout(timeout)
    got = b""
    try:
        while True:
            b = conn.recv(65536)
            if not b:
                break
            got += b
            if b"\r\n\r\n" in got and b"}" in got:
                break
    except (socket.timeout, ConnectionResetError):
        pass
    return got


def test_connection_and_buffered_body_limits_answer_503_and_recover(raw_upstream, gateway):
    """Many large or slow bodies cannot exhaust the host's memory, nor many idle connections its
    sockets: a body that would pass the worker's share of `limits.max_buffered_bytes` is refused
    before it is read, a connection past `limits.max_connections` is answered and closed — both
    503 with -32012, `Retry-After` and the limit named — and both are served again once the
    holders are gone. Bodies within the limit are unaffected."""
    up = raw_upstream(json_ok)
    mib = 1024 * 1024
    answer = json.dumps({"jsonrpc": "2.0", "id": "p-1", "result": {"pad": "y" * (700 * 1024)}}).encode()

    def big_answer(conn, head, body):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)

    big_up = raw_upstream(big_answer)
    g = gateway([{"path": "/mcp", "upstream": up.url()}, {"path": "/big", "upstream": big_up.url("/big")}], workers=1,
                extra=f"[limits]\nmax_body_bytes = {mib}\nmax_buffered_bytes = {mib + mib // 2}\nmax_connections = 3\n")
    big = json.dumps({**PING, "params": {"pad": "x" * (mib - 200)}}).encode()
    assert mib - 200 < len(big) <= mib
    # A client that announced a 1 MiB body and sends it slowly holds its bytes …
    slow = socket.create_connection(("127.0.0.1", g.port))
    slow.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                 + f"Content-Length: {len(big)}\r\n\r\n".encode() + big[:1000])
    assert g.await_metric("sluice_buffered_bytes", len(big)) == len(big)
    # … so a second large body does not fit — refused on its head alone — while a small one does.
    head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
    with socket.create_connection(("127.0.0.1", g.port)) as c:
        c.sendall(head + f"Content-Length: {len(big)}\r\n\r\n".encode())
        got = _head(c)
    assert got.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in got.lower(), got
    err = json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["code"] == -32012 and "limits.max_buffered_bytes = 1572864" in err["data"]["reason"], err
    assert httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=10).status_code == 200
    # Chunked bodies are counted as they grow.
    with socket.create_connection(("127.0.0.1", g.port)) as c:
        c.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for i in range(0, len(big), 64 * 1024):
                part = big[i:i + 64 * 1024]
                c.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                time.sleep(0.01)
        except OSError:
            pass  # refused mid-body: the gateway closed
        got = _head(c)
    assert got.startswith(b"HTTP/1.1 503") and b"-32012" in got, got
    # An answer the gateway must hold whole counts too: 700 KiB does not fit beside the slow body.
    r = httpx.post(g.url("/big"), json=PING, headers=ACCEPT, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == -32012 and "message bodies" in r.text, r.text
    assert g.metric("sluice_bodies_refused_total") == 3
    slow.sendall(big[1000:])
    assert _head(slow).startswith(b"HTTP/1.1 200"), "the slow body, once whole, is served"
    assert g.await_metric("sluice_buffered_bytes", 0) == 0, "given back after the exchange"
    assert httpx.post(g.url(), content=big, headers=ACCEPT, timeout=10).status_code == 200
    assert httpx.post(g.url("/big"), json=PING, headers=ACCEPT, timeout=10).status_code == 200
    # Connections: the slow one is still open (keep-alive); two more fill the limit of 3 once
    # the gateway has seen the closes of the two calls above.
    assert g.await_metric("sluice_active_connections", 1) == 1
    held = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(2)]
    assert g.await_metric("sluice_active_connections", 3) == 3, "the slow connection and the two held ones are open"
    extra = socket.create_connection(("127.0.0.1", g.port))
    got = _head(extra)
    assert got.startswith(b"HTTP/1.1 503"), got
    assert b"retry-after: 1" in got.lower() and b"-32012" in got and b"limits.max_connections = 3" in got, got
    assert extra.recv(10) == b"", "closed after the answer"
    extra.close()
    assert g.metric("sluice_connections_refused_total") == 1
    for s in held + [slow]:
        s.close()
    assert g.await_metric("sluice_active_connections", 0) == 0, "closed connections are given back"
    assert httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=10).status_code == 200


def test_sse_events_count_against_the_memory_limit(raw_upstream, gateway):
    """An SSE event is held until it is whole, and what is held counts against
    `limits.max_buffered_bytes` like a body: past the worker's share the waiting call gets its
    error as the stream's last event (-32012), an event over `limits.max_sse_event_bytes` ends
    the stream with -32001, and the memory is given back either way."""
    kib = 1024

    def sse_answer(conn, head, body):
        size = int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])
        req = json.loads(body)
        ev = b"event: message\ndata: " + json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": {"pad": ("ok " * size)[:size]}}).encode() + b"\n\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + f"Content-Length: {len(ev)}\r\n\r\n".encode() + ev)

    up = raw_upstream(sse_answer)
    g = gateway([{"path": "/mcp", "upstream": up.url()}, {"path": "/sse", "upstream": up.url("/sse")}], workers=1,
                extra=f"[limits]\nmax_body_bytes = {1024 * kib}\nmax_sse_event_bytes = {1024 * kib}\nmax_buffered_bytes = {1536 * kib}\n")

    def call(size: int) -> list:
        r = httpx.post(g.url(f"/sse/{size}"), json={**PING, "id": f"s-{size}"}, headers=ACCEPT, timeout=20)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text[:300]
        return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]

    # Within the limits an event of 900 KiB goes through whole.
    [ok] = call(900 * kib)
    assert ok["id"] == "s-921600" and len(ok["result"]["pad"]) == 900 * kib
    # With a slow client holding a 1 MiB request body, the same event no longer fits.
    big = json.dumps({**PING, "params": {"pad": "x" * (1000 * kib)}}).encode()
    slow = socket.create_connection(("127.0.0.1", g.port))
    slow.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                 + f"Content-Length: {len(big)}\r\n\r\n".encode() + big[:1000])
    time.sleep(0.3)
    [refused] = call(900 * kib)
    assert refused["id"] == "s-921600" and refused["error"]["code"] == -32012 and "limits.max_buffered_bytes" in refused["error"]["data"]["reason"], refused
    slow.close()
    time.sleep(0.3)
    # An event over max_sse_event_bytes ends the stream with the upstream's fault named.
    [too_big] = call(1100 * kib)
    assert too_big["error"]["code"] == -32001 and "limits.max_sse_event_bytes" in too_big["error"]["data"]["reason"], too_big
    assert g.await_metric("sluice_buffered_bytes", 0) == 0, "given back"
    assert g.metric("sluice_bodies_refused_total") == 1
    # Both refusals are the calls' answers in the record.
    settled(g)
    answers = [(e.get("rpc_id"), e.get("error_code")) for e in spool_events(g.spool) if e["kind"] == "response"]
    assert answers == [('"s-921600"', None), ('"s-921600"', -32012), ('"s-1126400"', -32001)], answers


def test_json_nested_past_the_limit_is_refused_and_the_gateway_stays_up(raw_upstream, gateway):
    """A few hundred kilobytes of `[` exhausted a worker's stack and aborted the process (every
    worker, every connection). Now refused before a value is built, in both directions."""
    deep = lambda d: "[" * d + "]" * d  # noqa: E731
    answers = {"mode": "ok"}

    def handler(conn, head, body):
        rid = json.loads(body)["id"] if body.startswith(b"{") else None
        result = json.loads(deep(10)) if answers["mode"] == "ok" else None
        payload = (json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"x": result}}) if result is not None
                   else '{"jsonrpc":"2.0","id":%s,"result":{"x":%s}}' % (json.dumps(rid), deep(200_000))).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}, {"path": "/api", "upstream": up.url("/api"), "kind": "http"}], workers=1)
    call = lambda x: '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"x":%s}}}' % x  # noqa: E731
    with httpx.Client(timeout=10) as c:
        for body, url in [(call(deep(300_000)), g.url()), (call(deep(129)), g.url()), (deep(300_000), g.url("/api/x"))]:
            r = c.post(url, content=body, headers=ACCEPT)
            assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text[:300]
            assert "deeper than 128 levels" in r.json()["error"]["data"]["reason"]
        assert up.requests == [], "nothing too deep was forwarded"
        r = c.post(g.url(), content=call(deep(100)), headers=ACCEPT)
        assert r.status_code == 200 and r.json()["result"]["x"] == json.loads(deep(10)), "the same worker still serves"
        # An upstream answering too deep: the agent gets an error for its call, not the answer.
        answers["mode"] = "deep"
        r = c.post(g.url(), content=call("1"), headers=ACCEPT)
        assert r.status_code == 502 and r.json()["id"] == 7 and r.json()["error"]["code"] == -32001, r.text[:300]
        assert "deeper than 128 levels" in r.json()["error"]["data"]["reason"]
        answers["mode"] = "ok"
        assert c.post(g.url(), content=call("1"), headers=ACCEPT).status_code == 200
    assert g.proc.p.poll() is None


def test_answers_a_client_could_read_past_inspection_are_not_forwarded(raw_upstream, gateway):
    """An MCP answer is JSON or an SSE stream (or text where no client reads JSON-RPC from it:
    202, errors). A body the gateway would pass as binary, or with two Content-Types — fetch
    joins them, and the TypeScript SDK then finds `application/json` in the joined value and
    parses what the gateway never inspected — is replaced by an error for the call."""
    rpc = lambda text: json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": text}]}}).encode()  # noqa: E731
    answers = {
        "octet": (b"200 OK", [b"Content-Type: application/octet-stream"], rpc(f"key {SECRET}")),
        "two": (b"200 OK", [b"Content-Type: application/octet-stream", b"Content-Type: application/json"], rpc(f"key {SECRET}")),
        "textjson": (b"200 OK", [b"Content-Type: text/plain; x=application/json"], rpc("a tool listing nobody filtered")),
        "untyped": (b"200 OK", [], rpc(f"key {SECRET}")),
        "typeless": (b"200 OK", [b"Content-Type: ;x=1"], rpc(f"key {SECRET}")),
        "accepted": (b"202 Accepted", [b"Content-Type: text/plain; charset=utf-8"], b"Accepted"),
        "error": (b"500 Internal Server Error", [b"Content-Type: text/plain"], f"boom with {SECRET}".encode()),
        "json": (b"200 OK", [b"Content-Type: application/json; charset=utf-8"], rpc(f"key {SECRET}")),
    }

    def handler(conn, head, body):
        status, headers, payload = answers[json.loads(body)["params"]["name"]] if body.startswith(b"{") else answers["json"]
        conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)

    up = raw_upstream(handler)
    g = gateway([{"path": "/mcp", "upstream": up.url()}, {"path": "/api", "upstream": up.url("/api"), "kind": "http"}])
    call = lambda name: {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": name, "arguments": {}}}  # noqa: E731
    with httpx.Client(timeout=10) as c:
        for name, shown in [("octet", "application/octet-stream"), ("two", "2 Content-Type headers"), ("textjson", "text/plain"), ("typeless", "no media type")]:
            r = c.post(g.url(), json=call(name), headers=ACCEPT)
            assert r.status_code == 502 and r.json()["id"] == 5 and r.json()["error"]["code"] == -32001, (name, r.text)
            assert shown in r.json()["error"]["data"]["reason"] and SECRET not in r.text and "nobody filtered" not in r.text, (name, r.text)
        # Untyped (as the TypeScript SDK answers a DELETE): scanned as text; SDKs do not read it.
        r = c.post(g.url(), json=call("untyped"), headers=ACCEPT)
        assert r.status_code == 200 and SECRET not in r.text and "[REDACTED" in r.text, r.text
        r = c.post(g.url(), json=call("accepted"), headers=ACCEPT)
        assert (r.status_code, r.text) == (202, "Accepted")
        r = c.post(g.url(), json=call("error"), headers=ACCEPT)
        assert r.status_code == 500 and r.text.startswith("boom with ") and SECRET not in r.text, r.text  # scanned as text
        r = c.post(g.url(), json=call("json"), headers=ACCEPT)
        assert r.status_code == 200 and SECRET not in r.text and "[REDACTED" in r.text
        # A plain route may answer binary, but not with two Content-Types either.
        r = c.post(g.url("/api/x"), json=call("octet"))
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        r = c.post(g.url("/api/x"), json=call("two"))
        assert r.status_code == 502 and SECRET not in r.text
        # A request may not repeat the headers the gateway decides on either.
        for twice in [b"Content-Type: application/json\r\nContent-Type: text/plain", b"Mcp-Session-Id: a\r\nMcp-Session-Id: b"]:
            with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
                body = json.dumps(call("json")).encode()
                s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n" + twice
                          + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                head = s.recv(65536)
            assert head.startswith(b"HTTP/1.1 400 ") and b"more than one" in head, head


def test_an_upstream_can_have_its_own_timeouts(raw_upstream, gateway):
    """A server whose tools answer after minutes (JSON, not streamed) gets its own
    `upstream.timeouts`; every other upstream keeps `[timeouts]`. Both upstreams here answer
    after 1.5 s; the global first-byte timeout is 1 s."""
    def slow(conn, head, body):
        time.sleep(1.5)
        json_ok(conn, head, body)

    a, b = raw_upstream(slow), raw_upstream(slow)
    g = gateway([{"path": "/default", "upstream": a.url()}, {"path": "/patient", "upstream": b.url()}], extra='[timeouts]\nupstream_first_byte = "1s"\n')
    cfg = g.config.read_text().replace('[[upstream]]\nname = "u1"\n', '[[upstream]]\nname = "u1"\ntimeouts = { upstream_first_byte = "5s" }\n')
    g.config.write_text(cfg)
    g.proc.p.send_signal(signal.SIGHUP)
    for _ in range(100):
        if g.metric("sluice_config_reloads_total") >= 1:
            break
        time.sleep(0.1)
    r = httpx.post(g.url("/default"), json=PING, headers=ACCEPT, timeout=10)
    assert r.status_code == 504 and "within 1.0s" in r.json()["error"]["data"]["reason"], r.text
    assert httpx.post(g.url("/patient"), json=PING, headers=ACCEPT, timeout=10).status_code == 200


def test_a_log_reader_that_stalls_never_stalls_the_gateway(raw_upstream, tmp_path):
    """The gateway's stderr is a pipe nobody reads (a stalled log collector; an MCP client
    that never drains a server's stderr). Every call with personal data in it logs a finding;
    once the pipe and the log queue are full the lines are dropped and counted, and calls keep being
    answered.
    When the pipe is read again, a warning says how many lines were lost."""
    up = raw_upstream(echo_id)
    port, admin = free_port(), free_port()
    p = subprocess.Popen([str(SLUICE), "run", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--upstream", up.url("/mcp"),
                          "--workers", "1", "--spool", str(tmp_path / "spool")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready_at(admin)
        # A hundred addresses: a hundred finding lines per call.
        note = ", ".join(f"user{i}@example.com" for i in range(100))
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {"note": note}}}
        with httpx.Client(timeout=5) as c:
            # 60,000 lines: far more than a pipe (64 KiB) and the log queue hold. The gateway
            # used to stop answering once the pipe was full.
            for i in range(600):
                r = c.post(f"http://127.0.0.1:{port}/mcp", json={**call, "id": i}, headers=ACCEPT)
                assert r.status_code == 200, (i, r.text)
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        dropped = next(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("sluice_log_lines_dropped_total"))
        assert dropped > 0, metrics
        # The reader is back: the warning with the count comes through.
        fd = p.stderr.fileno()
        os.set_blocking(fd, False)
        out, deadline = b"", time.time() + 10
        while time.time() < deadline and b"log lines dropped" not in out:
            try:
                out += os.read(fd, 1 << 16)
            except BlockingIOError:
                time.sleep(0.1)
        assert b"log lines dropped" in out, out[-2000:]
        # Unread again, and full: a stop does not wait on it for ever.
        with httpx.Client(timeout=5) as c:
            for i in range(300):
                assert c.post(f"http://127.0.0.1:{port}/mcp", json={**call, "id": i}, headers=ACCEPT).status_code == 200
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0, "the gateway exits on SIGTERM though its stderr is not read"
    finally:
        p.kill()
        p.wait()


def test_an_id_longer_than_any_id_is_refused(raw_upstream, gateway):
    """The gateway keeps each pending request's id until its answer: a client sending ids as
    long as its bodies could make it hold as much as it sends. Ids past 1,024 bytes are
    refused with what to do; one at the limit passes."""
    up = raw_upstream(echo_id)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    with httpx.Client(timeout=5) as c:
        r = c.post(g.url(), json={**PING, "id": "i" * 5000}, headers=ACCEPT)
        err = r.json()["error"]
        assert (r.status_code, err["code"]) == (400, -32600) and "longer than 1,024 bytes" in err["data"]["reason"], r.text[:300]
        assert len(up.requests) == 0
        r = c.post(g.url(), json={**PING, "id": ("call-" * 205)[:1024]}, headers=ACCEPT)
        assert r.status_code == 200 and len(up.requests) == 1, r.text[:300]


def test_a_flood_of_admin_connections_is_turned_away_not_given_a_thread_each(gateway, raw_upstream):
    """The admin listener serves each connection on a thread of its own. 64 idle connections
    take every slot: the next one is answered 503 at once (no 65th thread); once they are
    gone, the listener answers again. The agents' listener is not affected meanwhile."""
    up = raw_upstream(echo_id)
    g = gateway([{"path": "/mcp", "upstream": up.url()}])
    idle = [socket.create_connection(("127.0.0.1", g.admin_port), timeout=5) for _ in range(64)]
    try:
        time.sleep(0.3)
        r = httpx.get(g.admin("/readyz"), timeout=5)
        assert r.status_code == 503 and "as many connections as it takes" in r.text, r.text
        assert httpx.post(g.url(), json=PING, headers=ACCEPT, timeout=5).status_code == 200
    finally:
        for s in idle:
            s.close()
    for _ in range(50):
        if httpx.get(g.admin("/readyz"), timeout=5).status_code == 200:
            break
        time.sleep(0.1)
    assert httpx.get(g.admin("/readyz"), timeout=5).status_code == 200
