"""Plain HTTP routes (prefix and host routing, path rewriting, JSON and other bodies) and TLS
on both sides: sluice terminating TLS for agents and originating it to an https upstream."""

import json
import signal
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import SLUICE, Proc, free_ports, wait_port


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        payload = json.dumps({"method": self.command, "path": self.path, "host": self.headers.get("host"),
                              "body": body.decode(errors="replace"), "xff": self.headers.get("x-forwarded-for")}).encode()
        if self.path.endswith("/text"):
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"plain ", b"world"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _reply

    def log_message(self, *a):
        pass


def serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def echo_http():
    s = serve(ThreadingHTTPServer(("127.0.0.1", 0), Echo))
    yield f"http://127.0.0.1:{s.server_port}"
    s.shutdown()


def openssl(d, *args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)


def make_ca(d, name, cn):
    openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.pem")


def issue(d, name, subj, ext, ca="ca"):
    """A P-256 key and a certificate for `subj` signed by CA `ca`, with the extensions `ext`."""
    openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subj,
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (d / f"{name}.cnf").write_text(ext)
    openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.cnf", "-out", f"{name}.pem")
    return (str(d / f"{name}.pem"), str(d / f"{name}.key"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca", "Sluice Test CA")
    issue(d, "leaf", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    return d


def test_plain_http_routes_prefix_host_and_rewrite(echo_http, gateway):
    g = gateway([{"path": "/mcp", "upstream": echo_http + "/unused"}])
    port = g.port
    # Replace the config with two plain routes: prefix rewrite, and a host-specific route.
    g.config.write_text(f"""
[gateway]
workers = 2
[[listener]]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{g.admin_port}"
[[upstream]]
name = "api"
url = "{echo_http}/v2"
[[route]]
name = "tickets"
kind = "http"
path = "/api"
upstream = "api"
[[route]]
name = "special-host"
kind = "http"
path = "/api"
host = "special.example"
upstream = "api"
upstream_path = "/host-special"
rewrite_host = true
""")
    g.proc.p.send_signal(signal.SIGHUP)
    end = time.time() + 30  # a reload recompiles the rule packs when they changed
    while g.metric("sluice_config_reloads_total") < 1 and time.time() < end:
        time.sleep(0.05)
    with httpx.Client(timeout=5) as c:
        r = c.post(g.url("/api/tickets?state=open"), json={"title": "printer on fire"})
        assert r.status_code == 201
        seen = r.json()
        assert seen["path"] == "/v2/tickets?state=open"
        assert json.loads(seen["body"]) == {"title": "printer on fire"}
        assert seen["host"] == f"127.0.0.1:{port}", "Host passes through unchanged by default"
        assert seen["xff"] == "127.0.0.1"
        r = c.get(g.url("/api/x"), headers={"host": "special.example"})
        assert r.json()["path"] == "/host-special/x"
        assert r.json()["host"] == echo_http.removeprefix("http://"), "rewrite_host sends the upstream's authority"
        r = c.get(g.url("/api/text"))
        assert r.text == "hello plain world" and r.headers["content-type"] == "text/plain"
        r = c.put(g.url("/api/raw"), content=b"not json at all", headers={"content-type": "text/plain"})
        assert r.json()["body"] == "not json at all"
        assert c.get(g.url("/elsewhere")).status_code == 404
    assert g.metric("sluice_requests_total", route="tickets", method="POST", status="201") == 1
    assert g.metric("sluice_requests_total", route="special-host", method="GET", status="200") == 1


def test_tls_termination_and_origination(certs):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    up = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    up.socket = ctx.wrap_socket(up.socket, server_side=True)
    serve(up)
    p, port, _ = echo_gateway(certs, f"https://localhost:{up.server_port}", listener_tls='tls = { cert = "leaf.pem", key = "leaf.key" }',
                              upstream_tls='tls = { ca = "ca.pem" }')
    try:
        wait_port(port, proc=p.p)
        with httpx.Client(verify=ssl.create_default_context(cafile=str(certs / "ca.pem")), timeout=5) as c:
            r = c.post(f"https://localhost:{port}/echo", json={"a": 1})
            assert r.status_code == 201
            assert r.json()["path"] == "/echo"
        # A client that does not trust the gateway's CA cannot connect.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://localhost:{port}/echo", timeout=5)
    finally:
        assert p.stop() == 0
    up.shutdown()


def test_upstream_with_untrusted_certificate_is_502(certs, gateway):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    up = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    up.socket = ctx.wrap_socket(up.socket, server_side=True)
    serve(up)
    # No `ca`: the Mozilla roots do not include the test CA, so the upstream is not trusted.
    g = gateway([{"path": "/mcp", "upstream": f"https://localhost:{up.server_port}/mcp"}])
    r = httpx.post(g.url(), json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, timeout=5)
    assert r.status_code == 502
    assert "TLS handshake" in r.json()["error"]["data"]["reason"]
    assert r.json()["id"] == 3
    up.shutdown()


def client_cert(certs, name, subj, san=None, ca="ca"):
    return issue(certs, name, subj, "extendedKeyUsage=clientAuth\n" + (f"subjectAltName={san}\n" if san else ""), ca)


def test_mtls_client_certificates_are_identities_for_the_policy(certs, echo_http):
    """An mTLS listener: the verified client certificate names the caller (CN here), its groups
    come from [identity.mtls]; the policy decides on them. A certificate from another CA never
    completes the handshake; without one (client_auth = "optional") the call is a 401."""
    make_ca(certs, "rogue", "Rogue CA")
    bot = client_cert(certs, "bot", "/CN=build-bot/O=CI", san="URI:spiffe://corp/ci/build-bot")
    stranger = client_cert(certs, "stranger", "/CN=stranger")
    rogue = client_cert(certs, "rogue-bot", "/CN=build-bot", ca="rogue")
    (certs / "mtls-policy.toml").write_text(
        "[[rule]]\nid = \"ci-bots\"\nwhen = 'identity.via == \"mtls\" && \"ci\" in identity.groups'\naction = \"allow\"\n")
    p, port, _ = echo_gateway(
        certs, echo_http,
        listener_tls='tls = { cert = "leaf.pem", key = "leaf.key", client_ca = "ca.pem", client_auth = "optional" }',
        extra='[identity]\n[identity.mtls]\nsubject = "cn"\n[[identity.mtls.client]]\nsubject = "build-bot"\ngroups = ["ci"]\n'
              'agent_type = "service"\n[policy]\nfile = "mtls-policy.toml"\n')
    try:
        wait_port(port, proc=p.p)

        def call(cert):
            ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            if cert:
                ctx.load_cert_chain(*cert)
            with httpx.Client(verify=ctx, timeout=5) as c:
                return c.post(f"https://localhost:{port}/echo", json={"a": 1})

        assert call(bot).status_code == 201
        r = call(stranger)
        assert r.status_code == 403 and r.json()["error"]["code"] == -32009, r.text
        assert "`stranger`" in r.json()["error"]["data"]["reason"]
        r = call(None)
        assert r.status_code == 401 and r.json()["error"]["code"] == -32008, r.text
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            call(rogue)
    finally:
        assert p.stop() == 0
    events = [json.loads(l) for l in subprocess.run([str(SLUICE), "spool", "cat", str(certs / f"spool-{port}")],
                                                     capture_output=True, text=True).stdout.splitlines()]
    decided = {(e["identity"]["subject"], e["identity"].get("via"), e["decision"]["action"])
               for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "policy"}
    assert ("build-bot", "mtls", "allow") in decided and ("stranger", "mtls", "deny") in decided, decided


def test_a_provider_behind_a_private_ca_is_trusted_through_outbound_ca(certs, gateway, raw_upstream, tmp_path):
    """The gateway's own HTTPS requests (OIDC discovery and JWKS here; token endpoints and
    approval webhooks alike) trust Mozilla's roots by default, so a company's identity provider
    with a certificate of the company's CA could not be used: every token was refused because
    the JWKS never loaded. `gateway.outbound_ca` names the roots to trust instead. A real
    OpenID Provider serving HTTPS with a certificate of a test CA."""
    from test_identity import OP, echo_upstream, identity_cfg, new_key

    _, jwk = new_key("k1")
    op = OP(tmp_path, [jwk], tls=(str(certs / "leaf.pem"), str(certs / "leaf.key"), str(certs / "ca.pem")))
    try:
        up = echo_upstream(raw_upstream)
        token = op.token()
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        h = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {token}"}
        public = gateway([{"path": "/mcp", "upstream": up.url()}], extra=identity_cfg(op), home="public-roots")
        r = httpx.post(public.url(), json=init, headers=h, timeout=10)
        assert r.status_code == 401, r.text
        assert "JWKS fetch failed" in public.proc.text() and "UnknownIssuer" in public.proc.text(), public.proc.text()[-2000:]
        trusting = gateway([{"path": "/mcp", "upstream": up.url()}], extra=identity_cfg(op), gateway_keys=f'outbound_ca = "{certs / "ca.pem"}"\n', home="company-ca")
        deadline = time.time() + 15
        while (r := httpx.post(trusting.url(), json=init, headers=h, timeout=10)).status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert "JWKS loaded" in trusting.proc.text()
        # The reviewers' CLI against an https address with that CA's certificate (the
        # provider's port stands in for an admin listener behind a TLS proxy: only the
        # handshake is looked at).
        cli = [str(SLUICE), "approvals", "--admin", op.issuer, "--token", "t", "list"]
        untrusted = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert untrusted.returncode == 2 and "UnknownIssuer" in untrusted.stderr, untrusted
        trusted = subprocess.run(cli + ["--ca", str(certs / "ca.pem")], capture_output=True, text=True, timeout=30)
        assert trusted.returncode == 2 and "UnknownIssuer" not in trusted.stderr and "/approvals: 404" in trusted.stderr, trusted
    finally:
        op.stop()
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\noutbound_ca = "no-such.pem"\n[[listener]]\naddress = "127.0.0.1:0"\n')
    checked = subprocess.run([str(SLUICE), "check", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 2 and "gateway.outbound_ca: cannot read" in checked.stderr and "ca-certificates.crt" in checked.stderr, checked


def test_the_gateways_own_requests_go_through_the_egress_proxy(certs, gateway, raw_upstream, tmp_path, monkeypatch):
    """Gateway hosts often reach the internet only through an egress proxy. The gateway's own
    HTTPS requests (here OIDC discovery and the JWKS; token endpoints and webhooks alike)
    follow `HTTPS_PROXY` (also `ALL_PROXY`, `HTTP_PROXY`; `NO_PROXY` honoured) from its
    environment, tunnelled with CONNECT and still checked against `outbound_ca`. A real
    forward proxy (PyPI `proxy.py`) that logs every tunnel."""
    from conftest import PY, free_port
    from test_identity import OP, echo_upstream, identity_cfg, new_key

    port = free_port()
    proxy = Proc([PY, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port), "--num-workers", "1", "--num-acceptors", "1", "--log-level", "INFO"], tmp_path / "proxy.log")
    wait_port(port, proc=proxy.p)
    _, jwk = new_key("k1")
    op = OP(tmp_path, [jwk], tls=(str(certs / "leaf.pem"), str(certs / "leaf.key"), str(certs / "ca.pem")))
    try:
        up = echo_upstream(raw_upstream)
        token = op.token()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=identity_cfg(op), gateway_keys=f'outbound_ca = "{certs / "ca.pem"}"\n')
        monkeypatch.delenv("HTTPS_PROXY")
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        h = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {token}"}
        deadline = time.time() + 15
        while (r := httpx.post(g.url(), json=init, headers=h, timeout=10)).status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        # The proxy logs a tunnel when it closes: the gateway keeps its connection open.
        assert g.proc.stop() == 0
        deadline = time.time() + 10
        while f"CONNECT 127.0.0.1:{op.port}" not in (log := (tmp_path / "proxy.log").read_text()) and time.time() < deadline:
            time.sleep(0.1)
        assert f"CONNECT 127.0.0.1:{op.port}" in log, log[-2000:]
    finally:
        op.stop()
        proxy.stop()


def test_upstreams_reached_through_an_egress_proxy(certs, gateway, py_json, tmp_path):
    """A gateway host that reaches remote MCP servers only through an HTTP forward proxy:
    `upstream.proxy` tunnels each upstream connection with CONNECT (TLS to the upstream inside
    it, still checked against the upstream's CA), with `Proxy-Authorization` from a file. A
    real forward proxy (PyPI `proxy.py`, requiring basic auth) logs every tunnel; without the
    credential the agent gets 502 saying what the proxy wants."""
    from conftest import PY, free_port

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    secure = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    serve(secure)
    port = free_port()
    proxy = Proc([PY, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port), "--num-workers", "1", "--num-acceptors", "1",
                  "--basic-auth", "gw:tunnel-pass-7", "--log-level", "INFO"], tmp_path / "proxy.log")
    try:
        wait_port(port, proc=proxy.p)
        (tmp_path / "proxy.auth").write_text("gw:tunnel-pass-7\n")
        via = f'proxy = {{ url = "http://127.0.0.1:{port}", auth_file = "{tmp_path / "proxy.auth"}" }}\n'
        g = gateway([
            {"path": "/mcp", "upstream": py_json, "upstream_keys": via},
            {"path": "/secure", "kind": "http", "upstream": f"https://localhost:{secure.server_port}", "upstream_keys": f'tls = {{ ca = "{certs / "ca.pem"}" }}\n{via}'},
            {"path": "/noauth", "kind": "http", "upstream": f"https://localhost:{secure.server_port}", "upstream_keys": f'tls = {{ ca = "{certs / "ca.pem"}" }}\nproxy = {{ url = "http://127.0.0.1:{port}" }}\n'},
        ])
        checked = subprocess.run([str(SLUICE), "check", "--config", str(g.config)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0 and f"upstream u0: through egress proxy 127.0.0.1:{port} (CONNECT, with credentials)" in checked.stdout, checked
        assert f"upstream u2: through egress proxy 127.0.0.1:{port} (CONNECT)" in checked.stdout and "tunnel-pass-7" not in checked.stdout, checked.stdout
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        r = httpx.post(g.url("/mcp"), json=init, headers={"accept": "application/json, text/event-stream"}, timeout=10)
        assert r.status_code == 200 and r.json()["result"]["serverInfo"]["name"] == "sluice-e2e-py", r.text
        r = httpx.post(g.url("/secure/echo"), json={"a": 1}, timeout=10)
        assert r.status_code == 201 and r.json()["path"] == "/echo", r.text
        r = httpx.post(g.url("/noauth/echo"), json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, timeout=10)
        assert r.status_code == 502, r.text
        reason = r.json()["error"]["data"]["reason"]
        assert f"egress proxy 127.0.0.1:{port}" in reason and "407" in reason and "auth_env or auth_file" in reason, reason
        assert "tunnel-pass-7" not in g.proc.text()
        # The proxy logs a tunnel when it closes: the gateway keeps its connections open.
        assert g.proc.stop() == 0
        up_port = py_json.split(":")[2].split("/")[0]
        deadline = time.time() + 10
        while not all(f"CONNECT 127.0.0.1:{p}" in (log := (tmp_path / "proxy.log").read_text()) or f"CONNECT localhost:{p}" in log for p in (up_port, secure.server_port)) and time.time() < deadline:
            time.sleep(0.1)
        assert f"CONNECT 127.0.0.1:{up_port}" in log and f"CONNECT localhost:{secure.server_port}" in log, log[-3000:]
    finally:
        proxy.stop()
        secure.shutdown()


def served_certificate(port, ca) -> bytes:
    """The certificate the listener on `port` presents (DER), verified against `ca`."""
    import socket

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, ctx.wrap_socket(s, server_hostname="localhost") as t:
        return t.getpeercert(binary_form=True)


def renewable(d, certs):
    """The test CA copied into `d`, two certificates for localhost that it signed, and the
    first in place as `live.pem`/`live.key` (a renewal puts the second there)."""
    for name in ("ca.pem", "ca.key"):
        (d / name).write_bytes((certs / name).read_bytes())
    first = issue(d, "first", "/CN=localhost/O=first", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    second = issue(d, "second", "/CN=localhost/O=second", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    renew(d, first)
    return first, second


def renew(d, pair):
    (d / "live.pem").write_bytes(open(pair[0], "rb").read())
    (d / "live.key").write_bytes(open(pair[1], "rb").read())


def echo_gateway(d, echo_http, listener_tls="", admin_tls="", extra="", upstream_tls=""):
    """sluice (2 workers) with one plain route to `echo_http`, its config in `d` (checked with
    `sluice check` first), the given `tls = …` lines in its listener, admin and upstream tables
    and `extra` sections after the route; (process, port, admin port)."""
    port, admin = free_ports(2)
    cfg = d / f"sluice-{port}.toml"
    cfg.write_text(f"""
[gateway]
workers = 2
[[listener]]
address = "127.0.0.1:{port}"
{listener_tls}
[admin]
address = "127.0.0.1:{admin}"
{admin_tls}
[[upstream]]
name = "api"
url = "{echo_http}"
{upstream_tls}
[[route]]
kind = "http"
path = "/"
upstream = "api"
[recording.spool]
dir = "spool-{port}"
{extra}
""")
    out = subprocess.run([str(SLUICE), "check", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return Proc([str(SLUICE), "run", "--config", str(cfg)], d / f"sluice-{port}.log"), port, admin


def test_a_renewed_listener_certificate_is_served_after_a_reload(certs, echo_http, tmp_path):
    """Certificates are renewed every few weeks (ACME, cert-manager, a company CA): replacing
    the listener's certificate and key files and sending SIGHUP (a renewal hook, `systemctl
    reload`) serves the new certificate to new connections, without a restart and without
    dropping the connections already open. A renewal that left a key not matching its
    certificate is refused as a whole and the old certificate stays in use."""
    ca = certs / "ca.pem"
    d = tmp_path
    first, second = renewable(d, certs)
    der = lambda pem: ssl.PEM_cert_to_DER_cert(open(pem).read())
    p, port, admin = echo_gateway(d, echo_http, listener_tls='tls = { cert = "live.pem", key = "live.key" }')
    reloads = lambda: sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"http://127.0.0.1:{admin}/metrics").text.splitlines() if line.startswith("sluice_config_reloads_total"))
    try:
        wait_port(port, proc=p.p)
        # Every worker has its own listener socket: several connections reach both.
        assert all(served_certificate(port, ca) == der(first[0]) for _ in range(6))
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=5) as kept:
            assert kept.get(f"https://localhost:{port}/x").status_code == 200
            renew(d, second)
            p.p.send_signal(signal.SIGHUP)
            end = time.time() + 30
            while reloads() < 1 and time.time() < end:
                time.sleep(0.05)
            assert all(served_certificate(port, ca) == der(second[0]) for _ in range(6)), "new connections get the renewed certificate"
            assert kept.get(f"https://localhost:{port}/x").status_code == 200, "an open connection goes on"
        # A key that does not match the certificate: the reload is refused, the certificate in use stays.
        (d / "live.key").write_bytes(open(first[1], "rb").read())
        p.p.send_signal(signal.SIGHUP)
        end = time.time() + 30
        while "reload rejected" not in (log := p.log.read_text()) and time.time() < end:
            time.sleep(0.05)
        assert "listener[0].tls" in log, log[-2000:]
        assert all(served_certificate(port, ca) == der(second[0]) for _ in range(6))
    finally:
        assert p.stop() == 0


def test_the_admin_listener_over_tls_with_client_certificates(certs, echo_http, tmp_path):
    """`admin.tls`: reviewers' tokens, `/sessions` and `/metrics` no longer cross the
    management network in clear. The admin listener serves HTTPS with the configured
    certificate; with `client_ca`, a client without a certificate that CA signed is not let in
    at all (the reviewers' CLI presents one with `--cert`/`--key`, and checks the listener with
    `--ca`); a renewed certificate is served after a reload."""
    d = tmp_path
    _, renewed = renewable(d, certs)
    ops = issue(d, "ops", "/CN=ops", "extendedKeyUsage=clientAuth\n")
    p, _, admin = echo_gateway(d, echo_http, admin_tls='tls = { cert = "live.pem", key = "live.key", client_ca = "ca.pem" }')
    ca = ssl.create_default_context(cafile=str(d / "ca.pem"))
    with_cert = ssl.create_default_context(cafile=str(d / "ca.pem"))
    with_cert.load_cert_chain(*ops)
    url = f"https://localhost:{admin}"
    try:
        wait_port(admin, proc=p.p)
        r = httpx.get(f"{url}/readyz", verify=with_cert, timeout=5)
        assert r.status_code in (200, 503) and "workers" in r.json(), r.text
        assert "sluice_requests_total" in httpx.get(f"{url}/metrics", verify=with_cert, timeout=5).text
        # No client certificate, or plain HTTP: not let in.
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(f"{url}/metrics", verify=ca, timeout=5)
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5)
        # The reviewers' CLI over https: with --ca and the client certificate it reaches the
        # approvals API (which, without [identity] here, says approvals are off); without the
        # certificate it is refused in the handshake.
        cli = [str(SLUICE), "approvals", "--admin", url, "--token", "t", "--ca", str(d / "ca.pem"), "list"]
        refused = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 2 and "CertificateRequired" in refused.stderr, refused.stderr
        reached = subprocess.run(cli + ["--cert", ops[0], "--key", ops[1]], capture_output=True, text=True, timeout=30)
        import re
        assert reached.returncode == 2 and re.search(rf"GET {url}/approvals: \d{{3}}: ", reached.stderr), reached.stderr
        # A renewed certificate, after a reload.
        renew(d, renewed)
        p.p.send_signal(signal.SIGHUP)
        want = ssl.PEM_cert_to_DER_cert(open(renewed[0]).read())
        end = time.time() + 30
        import socket
        while time.time() < end:
            with socket.create_connection(("127.0.0.1", admin), timeout=5) as s, with_cert.wrap_socket(s, server_hostname="localhost") as t:
                if t.getpeercert(binary_form=True) == want:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the renewed certificate was not served")
    finally:
        assert p.stop() == 0


def test_an_admin_listener_off_the_host_without_tls_is_warned_about(certs, tmp_path):
    """`sluice check` (and the start) warn when the admin listener is reachable off the host
    in plain HTTP, and not once it has `admin.tls`."""
    def check(admin_tls):
        cfg = tmp_path / "adm.toml"
        cfg.write_text(f'[[listener]]\naddress = "127.0.0.1:0"\n[admin]\naddress = "0.0.0.0:0"\n{admin_tls}\n'
                       '[[upstream]]\nname = "a"\nurl = "http://127.0.0.1:1"\n[[route]]\npath = "/api"\nkind = "http"\nupstream = "a"\n')
        r = subprocess.run([str(SLUICE), "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return "cross the network in clear; set admin.tls" in r.stderr

    assert check("")
    assert not check(f'tls = {{ cert = "{certs / "leaf.pem"}", key = "{certs / "leaf.key"}" }}')


def test_a_hostile_egress_proxy_gets_nothing_through(gateway, echo_http, raw_upstream):
    """Whatever a proxy answers to CONNECT other than a bare 2xx — a head that never ends, bytes
    before the upstream was spoken to (a proxy answering for the upstream), a closed connection,
    another protocol, silence — the call is not sent and the agent gets 502 naming the proxy and
    what it did; the gateway stays up."""
    def answer(reply, hold=0.0):
        def handler(conn, head, body):
            assert head.startswith(b"CONNECT ")
            if reply:
                conn.sendall(reply)
            time.sleep(hold)
        return handler

    hostile = {  # what it sends, how long it holds the connection, what the agent is told
        "endless": (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 9000, 3, "head longer than 8192 bytes"),
        "early": (b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 3, "bytes after opening the tunnel"),
        "closes": (b"", 0, "closed the connection instead of answering CONNECT"),
        "not-http": (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 3, "did not answer CONNECT in HTTP"),
        "silent": (b"", 3, "opened no tunnel"),
    }
    proxies = {m: raw_upstream(answer(reply, hold)) for m, (reply, hold, _) in hostile.items()}
    routes = [{"path": f"/{m}", "kind": "http", "upstream": echo_http,
               "upstream_keys": f'proxy = {{ url = "{p.url().removesuffix("/mcp")}" }}\ntimeouts = {{ upstream_connect = "1s" }}\n'}
              for m, p in proxies.items()]
    g = gateway(routes)
    for m, (_, _, told) in hostile.items():
        r = httpx.post(g.url(f"/{m}/echo"), json={"a": 1}, timeout=15)
        assert r.status_code == 502, (m, r.status_code, r.text)
        reason = r.json()["error"]["data"]["reason"]
        assert f"egress proxy {proxies[m].url().removeprefix('http://').removesuffix('/mcp')}" in reason and told in reason, (m, reason)
    assert httpx.get(g.admin("/healthz"), timeout=5).status_code == 200
