"""Upstream tokens by OAuth 2.0 client credentials (`credential.kind = "oauth_client_credentials"`),
against a real OpenID Provider (npm oidc-provider): the gateway asks the provider for the
upstream's token as its own client, sends it upstream (agents never hold it), renews it before it
expires and when the upstream refuses it, and answers with what to do while it has none."""

import json
import time

import httpx
import jwt
import pytest

import subprocess

from conftest import SLUICE, spool_events
from test_identity import API_KEY, AUDIENCE, OP, identity_cfg, idp, new_key  # noqa: F401 (idp is a fixture)

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
SECRET = "sluice-gateway-secret"
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}


def sent_token(request: bytes) -> str:
    """The bearer token in a request the upstream received ('' if none)."""
    head = request.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            return value.strip().decode().removeprefix("Bearer ")
    return ""


class EchoUpstream:
    """A careless upstream: echoes the token it was sent in its answer and a header; answers 401
    while `refuse` is set."""

    def __init__(self, raw_upstream):
        self.refuse = False
        self.up = raw_upstream(self.handle)

    def handle(self, conn, head, body):
        if self.refuse:
            out = b'{"error":"invalid_token"}'
            conn.sendall(b'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer error="invalid_token", resource_metadata="http://upstream.example/.well-known/oauth-protected-resource"\r\n'
                         b"content-type: application/json\r\ncontent-length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
            return
        tok = sent_token(head)
        out = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {"content": [{"type": "text", "text": f"you sent {tok}"}]}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo: Bearer " + tok.encode() + b"\r\ncontent-length: "
                     + str(len(out)).encode() + b"\r\n\r\n" + out)


def with_oauth(g, op, secret_file, reloads):
    """Give the first upstream an OAuth client-credentials credential at `op` and reload."""
    cred = (f'{{ kind = "oauth_client_credentials", token_url = "{op.issuer}/token", client_id = "sluice-gateway", '
            f'file = "{secret_file}", scope = "mcp", resource = "{AUDIENCE}" }}')
    cfg = g.config.read_text().replace('[[upstream]]\nname = "u0"\n', f'[[upstream]]\nname = "u0"\ncredential = {cred}\n')
    g.config.write_text(cfg)
    reload(g, reloads)


def reload(g, reloads):
    g.proc.p.send_signal(1)
    wait(lambda: g.metric("sluice_config_reloads_total") >= reloads, "the configuration was not reloaded")


def wait(cond, what, limit=40.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def post(g):
    return httpx.post(g.url(), json=CALL, headers={**ACCEPT, "authorization": "Bearer agent-own-token"}, timeout=15)


def test_the_upstream_gets_a_token_from_the_provider_renewed_before_it_expires(idp_short, gateway, raw_upstream, tmp_path):
    up = EchoUpstream(raw_upstream)
    (tmp_path / "client.secret").write_text(SECRET + "\n")
    g = gateway([{"path": "/mcp", "upstream": up.up.url()}])
    with_oauth(g, idp_short, tmp_path / "client.secret", 1)
    wait(lambda: g.metric("sluice_upstream_token_held", upstream="u0") == 1, "no token held")
    r = post(g)
    assert r.status_code == 200, r.text
    first = sent_token(up.up.requests[-1])
    # A real token of the provider's, for the upstream's audience, naming the gateway's client.
    claims = jwt.decode(first, idp_short.k1.public_key(), algorithms=["RS256"], audience=AUDIENCE)
    assert claims["client_id"] == "sluice-gateway" and claims["iss"] == idp_short.issuer and claims["scope"] == "mcp", claims
    assert "agent-own-token" not in up.up.requests[-1].decode(), "the agent's credential is not passed on"
    # The echo comes back scrubbed, in the body and the header.
    assert first not in r.text and "[REDACTED:upstream-credential]" in r.text, r.text
    assert first not in r.headers.get("x-echo", ""), r.headers
    # Renewed at three quarters of its 4 s lifetime: a later call carries another, still valid.
    wait(lambda: g.metric("sluice_upstream_token_requests_total", upstream="u0", outcome="issued") >= 2, "not renewed", limit=15)
    r = post(g)
    assert r.status_code == 200, r.text
    second = sent_token(up.up.requests[-1])
    assert second != first
    assert jwt.decode(second, idp_short.k1.public_key(), algorithms=["RS256"], audience=AUDIENCE)["jti"] != claims["jti"]
    assert second not in r.text and first not in r.text
    # Neither token nor the client secret in the record or the log.
    g.proc.stop()
    spooled = json.dumps(spool_events(g.spool))
    log = g.proc.log.read_text()
    for s in (first, second, SECRET):
        assert s not in spooled and s not in log, s[:12]
    assert "upstream token obtained" in log


def test_without_a_token_calls_get_503_with_the_reason_and_a_refused_token_is_renewed(idp_short, gateway, raw_upstream, tmp_path):
    up = EchoUpstream(raw_upstream)
    secret = tmp_path / "client.secret"
    secret.write_text("not-the-secret\n")
    g = gateway([{"path": "/mcp", "upstream": up.up.url()}])
    with_oauth(g, idp_short, secret, 1)
    wait(lambda: g.metric("sluice_upstream_token_requests_total", upstream="u0", outcome="failed") >= 1, "no failed token request")
    # A wrong client secret: the provider's refusal, and what to do, reach the agent; nothing goes upstream.
    r = post(g)
    assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
    err = r.json()["error"]
    assert err["code"] == -32001 and r.json()["id"] == 7, err
    assert "no credential for upstream u0" in err["data"]["reason"] and "invalid_client" in err["data"]["reason"] and "check client_id and the client secret" in err["data"]["reason"], err
    assert up.up.requests == [], "nothing is sent without the credential"
    assert g.metric("sluice_upstream_token_held", upstream="u0") == 0
    # Fixed and reloaded: served.
    secret.write_text(SECRET + "\n")
    reload(g, 2)
    wait(lambda: g.metric("sluice_upstream_token_held", upstream="u0") == 1, "no token after the fix")
    assert post(g).status_code == 200
    issued = g.metric("sluice_upstream_token_requests_total", upstream="u0", outcome="issued")
    # The upstream refuses the token: the agent is not sent after the upstream's authorization
    # server (no 401, no challenge) but told to retry, and the token is renewed at once.
    up.refuse = True
    r = post(g)
    assert r.status_code == 502 and "www-authenticate" not in r.headers, (r.status_code, r.headers)
    err = r.json()["error"]
    assert err["code"] == -32001 and "refused the credential the gateway sends it" in err["data"]["reason"] and "renewing its token" in err["data"]["reason"], err
    wait(lambda: g.metric("sluice_upstream_token_requests_total", upstream="u0", outcome="issued") > issued, "not renewed on the refusal", limit=10)
    up.refuse = False
    assert post(g).status_code == 200
    # The provider goes away: the token is kept until it expires, then calls get 503 naming the
    # endpoint; back again, the gateway recovers by itself.
    idp_short.stop()
    wait(lambda: g.metric("sluice_upstream_token_held", upstream="u0") == 0, "the expired token was kept", limit=15)
    r = post(g)
    assert r.status_code == 503 and f"POST {idp_short.issuer}/token" in r.json()["error"]["data"]["reason"], r.text
    idp_short.start([idp_short.j1])
    wait(lambda: g.metric("sluice_upstream_token_held", upstream="u0") == 1, "not recovered after the provider came back", limit=45)
    assert post(g).status_code == 200
    g.proc.stop()
    log = g.proc.log.read_text()
    assert SECRET not in log and "not-the-secret" not in log


def test_sluice_check_names_a_credential_problem_by_its_path(tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('[[listener]]\naddress = "127.0.0.1:0"\n'
                   '[[upstream]]\nname = "api"\nurl = "http://127.0.0.1:9"\n'
                   'credential = { kind = "oauth_client_credentials", token_url = "http://idp.example.com/token", env = "SLUICE_SURELY_UNSET" }\n'
                   '[[route]]\npath = "/mcp"\nupstream = "api"\n')
    r = subprocess.run([str(SLUICE), "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    for want in ["upstream[0].credential.token_url", "clear text", "upstream[0].credential.client_id", "upstream[0].credential.env"]:
        assert want in out, (want, out)


@pytest.fixture
def idp_short(tmp_path):
    """The OpenID Provider issuing client-credentials tokens that live 4 seconds."""
    k1, j1 = new_key("k1")
    op = OP(tmp_path, [j1], ttl=4)
    op.k1, op.j1 = k1, j1
    yield op
    op.stop()


def test_private_key_jwt_gets_a_token_with_no_shared_secret(gateway, raw_upstream, tmp_path):
    """`client_auth = "private_key_jwt"` (RFC 7523): the gateway signs a client assertion with its
    own Ed25519 key; the provider was given only the public key, as `sluice jwks` prints it. A key
    the provider does not hold is refused (`invalid_client`), and the agent is told what to check."""
    def key(name):
        path = tmp_path / name
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True, capture_output=True)
        return path

    good, other = key("gateway.pem"), key("other.pem")

    def cred(token_url, pem):
        return (f'{{ kind = "oauth_client_credentials", token_url = "{token_url}", client_id = "sluice-gateway-pkjwt", '
                f'client_auth = "private_key_jwt", key_file = "{pem}", scope = "mcp", resource = "{AUDIENCE}" }}')

    probe = tmp_path / "probe.toml"
    probe.write_text('[[listener]]\naddress = "127.0.0.1:0"\n[[upstream]]\nname = "u"\nurl = "http://127.0.0.1:9"\n'
                     f'credential = {cred("http://127.0.0.1:9/token", good)}\n[[route]]\npath = "/mcp"\nupstream = "u"\n')
    printed = subprocess.run([str(SLUICE), "jwks", "--config", str(probe)], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0, printed.stderr
    k1, j1 = new_key("k1")
    op = OP(tmp_path, [j1], gateway_jwks=printed.stdout)
    try:
        up = EchoUpstream(raw_upstream)
        g = gateway([{"path": "/mcp", "upstream": up.up.url()}])
        cfg = g.config.read_text()
        g.config.write_text(cfg.replace('[[upstream]]\nname = "u0"\n', f'[[upstream]]\nname = "u0"\ncredential = {cred(op.issuer + "/token", good)}\n'))
        reload(g, 1)
        wait(lambda: g.metric("sluice_upstream_token_held", upstream="u0") == 1, f"no token:\n{g.proc.text()[-2000:]}")
        assert post(g).status_code == 200
        claims = jwt.decode(sent_token(up.up.requests[-1]), k1.public_key(), algorithms=["RS256"], audience=AUDIENCE)
        assert claims["client_id"] == "sluice-gateway-pkjwt", claims
        # Another key: the provider refuses the assertion; nothing goes upstream after the token lapses.
        g.config.write_text(cfg.replace('[[upstream]]\nname = "u0"\n', f'[[upstream]]\nname = "u0"\ncredential = {cred(op.issuer + "/token", other)}\n'))
        reload(g, 2)
        wait(lambda: g.metric("sluice_upstream_token_requests_total", upstream="u0", outcome="failed") >= 1, "the other key was not refused")
        r = post(g)
        assert r.status_code == 503 and "invalid_client" in r.text and "sluice jwks" in r.text, r.text
    finally:
        op.stop()


def test_only_a_running_gateway_asks_the_token_endpoint(raw_upstream, tmp_path):
    """`sluice check` and `sluice jwks` read a config with a token credential without calling
    its token endpoint (a check in a pipeline must not mint tokens, nor fail on the network)."""
    asked = raw_upstream(lambda conn, head, body: conn.sendall(b"HTTP/1.1 500 No\r\ncontent-length: 0\r\n\r\n"))
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True, capture_output=True)
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('[[listener]]\naddress = "127.0.0.1:0"\n[[upstream]]\nname = "api"\nurl = "http://127.0.0.1:9"\n'
                   f'credential = {{ kind = "oauth_client_credentials", token_url = "{asked.url("/token")}", client_id = "gw", '
                   f'client_auth = "private_key_jwt", key_file = "{key}" }}\n[[route]]\npath = "/mcp"\nupstream = "api"\n')
    for args in (["check"], ["jwks"]):
        r = subprocess.run([str(SLUICE), *args, "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    time.sleep(0.5)
    assert asked.requests == [], "the token endpoint was called"


TICKETS = "https://tickets.internal"


def test_each_callers_token_is_exchanged_for_one_to_the_upstream(idp, gateway, raw_upstream, tmp_path):
    """`kind = "oauth_token_exchange"` (RFC 8693), against the real OpenID Provider: the
    upstream gets, for each caller, a token the provider issued in exchange for the caller's
    own — naming the caller, for the upstream's audience, the gateway as actor — never the
    caller's token. One exchange per caller's token (held, shared by its calls); a provider's
    refusal is the caller's 403 with its reason; a caller without a bearer token (API key)
    cannot be exchanged; an upstream refusing the token has it asked for again."""
    up = EchoUpstream(raw_upstream)
    (tmp_path / "client.secret").write_text(SECRET + "\n")
    cred = (f'credential = {{ kind = "oauth_token_exchange", token_url = "{idp.issuer}/token", client_id = "sluice-gateway", '
            f'file = "{tmp_path / "client.secret"}", audience = "{TICKETS}" }}\n')
    g = gateway([{"path": "/mcp", "upstream": up.up.url(), "upstream_keys": cred}], extra=identity_cfg(idp))
    checked = subprocess.run([str(SLUICE), "check", "--config", str(g.config)], capture_output=True, text=True, timeout=30)
    assert f"upstream u0: each caller's token exchanged (RFC 8693) at {idp.issuer}/token as client sluice-gateway (client_secret_basic)" in checked.stdout, checked
    exchanges = lambda who: idp.proc.text().count(f"token exchange for {who} to {TICKETS}")

    def call(token=None, key=None):
        h = {**ACCEPT, **({"authorization": f"Bearer {token}"} if token else {}), **({"x-api-key": key} if key else {})}
        return httpx.post(g.url(), json=CALL, headers=h, timeout=15)

    support, reviewer = idp.token("support-agent"), idp.token("finance-reviewer")
    sent = []
    for _ in range(3):
        r = call(support)
        assert r.status_code == 200, r.text
        sent.append(sent_token(up.up.requests[-1]))
    assert len(set(sent)) == 1 and sent[0] != support, "one exchanged token, not the caller's"
    claims = jwt.decode(sent[0], idp.k1.public_key(), algorithms=["RS256"], audience=TICKETS)
    assert (claims["sub"], claims["iss"], claims["act"]) == ("support-agent", idp.issuer, {"sub": "sluice-gateway"}), claims
    assert support not in b"".join(up.up.requests).decode(), "the caller's own token is not passed on"
    assert sent[0] not in r.text and "[REDACTED:upstream-credential]" in r.text, r.text
    assert exchanges("support-agent") == 1, idp.proc.text()[-2000:]
    r = call(reviewer)
    assert r.status_code == 200, r.text
    other = sent_token(up.up.requests[-1])
    assert jwt.decode(other, idp.k1.public_key(), algorithms=["RS256"], audience=TICKETS)["sub"] == "finance-reviewer" and other != sent[0]

    # The provider refuses interns: their calls get its reason, nothing goes upstream; asked
    # once for two calls (the refusal stands for a while).
    before = len(up.up.requests)
    intern = idp.token("intern-agent")
    for _ in range(2):
        r = call(intern)
        err = r.json()["error"]
        assert r.status_code == 403 and err["code"] == -32004, r.text
        assert "interns may not reach this resource" in err["data"]["reason"], err
    assert idp.proc.text().count("token exchange refused: interns may not reach this resource") == 1
    # An API key cannot be exchanged.
    r = call(key=API_KEY)
    err = r.json()["error"]
    assert r.status_code == 403 and "API keys and client certificates cannot be exchanged" in err["data"]["reason"], r.text
    assert len(up.up.requests) == before
    assert g.metric("sluice_upstream_token_exchanges_total", upstream="u0", outcome="issued") == 2
    assert g.metric("sluice_upstream_token_exchanges_total", upstream="u0", outcome="failed") == 1
    assert g.metric("sluice_upstream_exchanged_tokens", upstream="u0") == 2

    # The upstream refuses the exchanged token: the caller's next call is exchanged anew.
    up.refuse = True
    r = call(support)
    assert r.status_code == 502 and "refused the credential" in r.json()["error"]["data"]["reason"], r.text
    up.refuse = False
    assert call(support).status_code == 200
    assert exchanges("support-agent") == 2
    g.proc.stop()
    spooled, log = json.dumps(spool_events(g.spool)), g.proc.log.read_text()
    for s in (sent[0], other, support, SECRET):
        assert s not in spooled and s not in log, s[:12]


def test_a_token_exchange_needs_callers_with_bearer_tokens(tmp_path):
    """Without `[identity]` authenticating callers by bearer tokens there is nothing to
    exchange: a config error naming the key and what to add."""
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('[[listener]]\naddress = "127.0.0.1:0"\n[[upstream]]\nname = "t"\nurl = "http://127.0.0.1:9"\n'
                   'credential = { kind = "oauth_token_exchange", token_url = "https://idp.example/token", client_id = "gw", env = "PATH" }\n'
                   '[[route]]\npath = "/mcp"\nupstream = "t"\n')
    r = subprocess.run([str(SLUICE), "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "upstream[0].credential.kind" in r.stderr and "[identity] must authenticate callers by bearer tokens" in r.stderr, r.stderr
