"""DNS rebinding: a web page that points a name of its own at the gateway is same-origin with
it, and its `GET`s carry no `Origin` — only `Host` gives it away. Requests naming the gateway by
a name it was not given are refused (421) before their body is read, and recorded; addresses,
loopback names, listed names and the names routes match by pass."""

import json
import socket
import subprocess
import time
import urllib.request

from conftest import HERE, NODE, spool_events
from test_credentials import with_credential
from test_recording import settled

SECRET = "ghs_RebindTarget0123456789abcdefXYZ"
ACCOUNT = {"account": "acct-7731", "balance": 1200}


def account_api(raw_upstream):
    """A plain HTTP API that answers only with the credential the gateway injects."""
    def handler(conn, head, body):
        auth = next((l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"authorization:")), b"")
        status, out = (b"200 OK", json.dumps(ACCOUNT).encode()) if auth == f"Bearer {SECRET}".encode() else (b"401 Unauthorized", b'{"error": "no credential"}')
        conn.sendall(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    return raw_upstream(handler)


def rebound_page(port: int, name: str, path: str) -> dict:
    r = subprocess.run([NODE, str(HERE / "clients" / "rebind_page.mjs"), str(port), name, path], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def reload(g, old: str, new: str, reloads: int):
    g.config.write_text(g.config.read_text().replace(old, new, 1))
    g.proc.p.send_signal(1)
    for _ in range(100):
        if g.metric("sluice_config_reloads_total") >= reloads:
            return
        time.sleep(0.2)
    raise AssertionError("the configuration was not reloaded")


def test_a_rebound_page_in_a_real_browser_cannot_read_a_route_the_gateway_injects_credentials_into(gateway, raw_upstream, tmp_path):
    up = account_api(raw_upstream)
    (tmp_path / "api.token").write_text(SECRET + "\n")
    g = gateway([{"path": "/api", "kind": "http", "upstream": up.url("")}])
    with_credential(g, f'{{ kind = "bearer", file = "{tmp_path / "api.token"}" }}')
    page = rebound_page(g.port, "cats.attacker.test", "/api/account")
    assert page["location"] == f"http://cats.attacker.test:{g.port}/cats.html"
    # The GET, without Origin, is refused on its Host; the POST on its Host as well (its
    # Origin would have been refused next). Nothing reached the API.
    assert page["get"]["status"] == 421 and page["post"]["status"] == 421, page
    for answer in (page["get"], page["post"]):
        err = json.loads(answer["body"])["error"]
        assert err["code"] == -32004 and "gateway.allowed_hosts" in err["data"]["reason"], err
        assert "acct-7731" not in answer["body"]
    assert up.requests == []
    settled(g)
    refused = [e for e in spool_events(g.spool) if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    # (Chromium retries a request answered 421 once, on a new connection: two each.)
    assert len(refused) in (2, 4) and all(e["status"] == 421 and e["error_code"] == -32004 and e["route"] == "r0" for e in refused), refused
    assert "attacker" not in json.dumps(refused), "the record does not quote the name the client sent"
    assert "cats.attacker.test" in g.proc.log.read_text(), "the log names it for the operator"

    # What the check stops: with any name accepted, the same page reads the account with the
    # gateway's credential (its POST is then refused on its Origin instead).
    reload(g, "[gateway]\n", '[gateway]\nallowed_hosts = ["*"]\n', 2)
    page = rebound_page(g.port, "cats.attacker.test", "/api/account")
    assert page["get"]["status"] == 200 and json.loads(page["get"]["body"]) == ACCOUNT, page
    assert page["post"]["status"] == 403 and "allowed_origins" in json.loads(page["post"]["body"])["error"]["data"]["reason"], page


def raw(port: int, head: str, body: bytes = b"") -> tuple[int, bytes, bool]:
    """Send one request; (status, body, whether the gateway closed the connection after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head_raw, _, rest = data.partition(b"\r\n\r\n")
        n = next(int(l.split(b":")[1]) for l in head_raw.split(b"\r\n") if l.lower().startswith(b"content-length:"))
        while len(rest) < n:
            rest += s.recv(65536)
        s.settimeout(2)
        try:
            closed = s.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            closed = False
        return int(head_raw.split(b" ")[1]), rest[:n], closed


def test_host_names_the_gateway_was_not_given_are_refused_and_its_own_pass(gateway, raw_upstream):
    up = account_api(raw_upstream)
    g = gateway([{"path": "/api", "kind": "http", "upstream": up.url("")}],
                gateway_keys='allowed_hosts = ["gw.corp.example", "*.agents.example:8443"]\n')
    body = b'{"iban": "DE89370400440532013000"}'
    post = f"POST /api/x HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    # A name nobody listed: 421 before the body is read, and the connection is closed.
    status, out, closed = raw(g.port, f"{post}\r\nHost: rebind.attacker.example:{g.port}", body)
    err = json.loads(out)["error"]
    assert (status, err["code"], closed) == (421, -32004, True), (status, out)
    assert "rebind.attacker.example" in err["data"]["reason"] and "gateway.allowed_hosts" in err["data"]["reason"]
    for bad in ["agents.example:8443", "x.agents.example:8080", "gw.corp.example.evil.net", "127.1", "localhost.attacker.example"]:
        assert raw(g.port, f"GET /api/x HTTP/1.1\r\nHost: {bad}")[0] == 421, bad
    # No Host, two, or not a host at all: 400 (RFC 9112 §3.2).
    for head in ["GET /api/x HTTP/1.1\r\nAccept: */*", "GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1", "GET /api/x HTTP/1.1\r\nHost: a b"]:
        status, out, closed = raw(g.port, head)
        assert (status, json.loads(out)["error"]["code"], closed) == (400, -32600, True), (head, out)
    assert up.requests == [], "nothing refused reached the upstream"
    # Addresses, loopback names, listed names (with their port where the entry has one).
    for ok in [f"127.0.0.1:{g.port}", "127.0.0.1", "[::1]", "localhost", f"LOCALHOST:{g.port}", "ui.localhost", "gw.corp.example", "GW.Corp.Example:443", "eu.agents.example:8443"]:
        status, out, _ = raw(g.port, f"GET /api/x HTTP/1.1\r\nHost: {ok}")
        assert status == 401 and b"no credential" in out, (ok, status, out)  # the upstream's own answer
    assert len(up.requests) == 9
    assert raw(g.port, "GET /api/x HTTP/1.0")[0] == 401, "HTTP/1.0 may omit Host"
    assert g.metric("sluice_requests_total", route="r0", status="421") == 6
    settled(g)
    refused = [e for e in spool_events(g.spool) if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert sorted(e["status"] for e in refused) == [400] * 3 + [421] * 6, refused
    assert "rebind" not in json.dumps(refused) and "DE89370400440532013000" not in json.dumps(spool_events(g.spool))


def test_a_name_a_route_matches_by_is_the_gateways(gateway, raw_upstream):
    up = account_api(raw_upstream)
    g = gateway([{"path": "/api", "kind": "http", "upstream": up.url("")}])
    assert raw(g.port, "GET /api/x HTTP/1.1\r\nHost: billing.example")[0] == 421
    reload(g, 'kind = "http"\n', 'kind = "http"\nhost = "billing.example"\n', 1)
    assert raw(g.port, "GET /api/x HTTP/1.1\r\nHost: billing.example:8080")[0] == 401
    assert raw(g.port, "GET /api/x HTTP/1.1\r\nHost: other.example")[0] == 421


def test_the_admin_listener_answers_only_to_the_gateways_names_and_its_page_cannot_be_framed(gateway, raw_upstream):
    """The admin listener (usually on loopback, the classic rebinding target) lists session ids
    at /sessions: the same Host check. Its reviewers' page may not be framed by another site."""
    up = account_api(raw_upstream)
    g = gateway([{"path": "/api", "kind": "http", "upstream": up.url("")}])
    with socket.create_connection(("127.0.0.1", g.admin_port), timeout=10) as s:
        s.sendall(b"GET /sessions HTTP/1.1\r\nHost: cats.attacker.test\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 421 ") and b"gateway.allowed_hosts" in body, data
    assert "sessions" in g.get_admin("/sessions")  # by address: served
    page = urllib.request.urlopen(g.admin("/approvals/ui"), timeout=5)
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
