"""Identity end to end: a real OpenID Provider (npm oidc-provider) issues JWT access tokens by
client-credentials; the gateway finds its keys by OIDC discovery and checks every call.
Negative tokens are signed with the provider's own key (or deliberately without it)."""

import base64
import hashlib
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import HERE, NODE, Proc, free_port, spool_events, wait_port

AUDIENCE = "https://gateway.test/mcp"
API_KEY = "sk-ci-bot-7f3a9c2e"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "id-test", "version": "1"}}}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def new_key(kid):
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    j = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k))
    j.update(kid=kid, use="sig", alg="RS256")
    return k, j


class OP:
    """oidc-provider on Node 22 with a key set the test controls."""

    def __init__(self, tmp, keys, ttl=None, gateway_jwks=None, tls=None):
        """`tls`: (certificate, key, CA) PEM paths: serve HTTPS with that certificate."""
        self.tmp, self.port = tmp, free_port()
        self.issuer = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify = tls[2] if tls else True
        self.proc = None
        self.env = {k: v for k, v in {"OIDC_CC_TTL": ttl and str(ttl), "OIDC_GATEWAY_JWKS": gateway_jwks,
                                      "OIDC_TLS_CERT": tls and tls[0], "OIDC_TLS_KEY": tls and tls[1]}.items() if v}
        self.start(keys)

    def start(self, keys):
        (self.tmp / "jwks.json").write_text(json.dumps({"keys": keys}))
        self.proc = Proc([NODE, str(HERE / "servers" / "oidc.mjs"), str(self.port), str(self.tmp / "jwks.json"), AUDIENCE],
                         self.tmp / f"oidc-{time.time_ns()}.log", self.env)
        wait_port(self.port, proc=self.proc.p)

    def stop(self):
        self.proc.stop()

    def token(self, client="support-agent"):
        r = httpx.post(f"{self.issuer}/token", auth=(client, f"{client}-secret"), verify=self.verify,
                       data={"grant_type": "client_credentials", "scope": "mcp", "resource": AUDIENCE})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]


@pytest.fixture
def idp(tmp_path):
    k1, j1 = new_key("k1")
    op = OP(tmp_path, [j1])
    op.k1 = k1
    yield op
    op.stop()


def echo_upstream(raw_upstream):
    def handler(conn, head, body):
        req = json.loads(body)
        out = json.dumps({"jsonrpc": "2.0", "id": req.get("id"), "result": {"protocolVersion": "2025-06-18", "capabilities": {},
                                                                         "serverInfo": {"name": "raw", "version": "1"}}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s-1\r\ncontent-length: "
                     + str(len(out)).encode() + b"\r\n\r\n" + out)
    return raw_upstream(handler)


def identity_cfg(op):
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    return (f'[identity]\nissuer = "{op.issuer}"\naudience = ["{AUDIENCE}"]\nagent_type_claim = "agent_type"\n'
            f'jwks_min_interval = "1s"\n'
            f'[[identity.api_key]]\nsubject = "ci-bot"\ngroups = ["ci"]\nagent_type = "service"\nsha256 = "{digest}"\n')


def call(g, token=None, headers=None):
    h = dict(ACCEPT)
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    return httpx.post(g.url(), json=INIT, headers=h, timeout=10)


def test_token_from_the_provider_is_accepted_recorded_and_not_passed_upstream(idp, gateway, raw_upstream):
    up = echo_upstream(raw_upstream)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=identity_cfg(idp))
    tok = idp.token()
    r = call(g, tok)
    assert r.status_code == 200, r.text
    sent = up.requests[-1].decode().lower()
    assert "authorization:" not in sent and tok.lower() not in sent, "the agent's token is for the gateway only"
    r = call(g, headers={"x-api-key": API_KEY})
    assert r.status_code == 200
    g.proc.stop()
    ids = [e["identity"] for e in spool_events(g.spool) if e["kind"] == "request"]
    assert {"subject": "support-agent", "groups": ["support", "readers"], "agent_type": "assistant", "via": "jwt"} in ids
    assert {"subject": "ci-bot", "groups": ["ci"], "agent_type": "service", "via": "api_key"} in ids


def test_missing_token_gets_a_challenge_that_leads_to_the_authorization_server(idp, gateway, raw_upstream):
    up = echo_upstream(raw_upstream)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=identity_cfg(idp))
    r = call(g)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == -32008
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer resource_metadata=")
    meta_url = challenge.split('"')[1]
    assert meta_url.endswith("/.well-known/oauth-protected-resource/mcp")
    meta = httpx.get(meta_url.replace(meta_url.split("/.well-known")[0], f"http://127.0.0.1:{g.port}")).json()
    assert meta["authorization_servers"] == [idp.issuer]
    disco = httpx.get(f"{meta['authorization_servers'][0]}/.well-known/openid-configuration").json()
    assert disco["token_endpoint"].startswith(idp.issuer)
    assert not up.requests, "nothing reaches the upstream unauthenticated"
    g.proc.stop()
    refused = [e for e in spool_events(g.spool) if e["kind"] == "decision"]
    assert [(e["decision"]["stage"], e["decision"]["action"], e["client_ip"]) for e in refused] == [("identity", "deny", "127.0.0.1")], refused


def b64(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def test_bad_tokens_are_refused_each_with_its_reason(idp, gateway, raw_upstream, tmp_path):
    up = echo_upstream(raw_upstream)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=identity_cfg(idp))
    now = int(time.time())
    good = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "support-agent", "iat": now, "exp": now + 300, "groups": ["support"]}
    sign = lambda claims, key=idp.k1, kid="k1", alg="RS256": jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    assert call(g, sign(good)).status_code == 200, "a token signed with the provider's key by hand is fine"
    other, _ = new_key("k-unknown")
    public_pem = idp.k1.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    real = idp.token()
    h, p, s = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["groups"] = ["admins"]
    cases = {
        "expired": (sign({**good, "iat": now - 7200, "exp": now - 3600}), "has expired"),
        "not yet valid": (sign({**good, "nbf": now + 3600}), "not valid yet"),
        "wrong audience": (sign({**good, "aud": "https://other.test/mcp"}), "not meant for this gateway"),
        "wrong issuer": (sign({**good, "iss": "https://evil.test"}), "does not trust"),
        "unknown kid": (sign(good, key=other, kid="k-unknown"), "does not publish"),
        "key not published, kid reused": (sign(good, key=other, kid="k1"), "signature does not verify"),
        "tampered claims": (f"{h}.{b64(claims)}.{s}", "signature does not verify"),
        "alg none": (f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64(good)}.", "not a well-formed JWT"),
        "HMAC with the public key": (hmac_token(good, public_pem), "does not accept"),
        "unknown API key": ("sk-not-a-key", "not known"),
    }
    for name, (tok, why) in cases.items():
        r = call(g, tok)
        assert r.status_code == 401, f"{name}: {r.status_code} {r.text}"
        reason = r.json()["error"]["data"]["reason"]
        assert why in reason, f"{name}: {reason}"
        assert tok not in r.text and tok not in r.headers.get("www-authenticate", ""), f"{name}: credential echoed"
    assert len(up.requests) == 1, "only the good call reached the upstream"


def hmac_token(claims, secret: bytes) -> str:
    import hmac
    head = b64({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    body = b64(claims)
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def test_opaque_tokens_are_read_by_the_issuers_introspection(idp, gateway, raw_upstream, tmp_path):
    """An access token that is not a JWT (the real provider issues opaque ones for a resource
    so configured) is read by the provider's introspection endpoint (RFC 7662) as the gateway's
    client: the caller and its groups from the answer, held (one introspection for several
    calls), a token the provider does not vouch for refused with 401 (and not asked about again
    at once), JWTs and API keys as before, reviewers on the admin listener read the same way; with the provider down, a held token still works
    and a new one gets 503 — the gateway cannot tell, the agent is not sent for a new token."""
    up = echo_upstream(raw_upstream)
    (tmp_path / "introspection.secret").write_text("sluice-gateway-secret\n")
    extra = identity_cfg(idp) + (f'[identity.introspection]\nurl = "{idp.issuer}/token/introspection"\nclient_id = "sluice-gateway"\n'
                                 f'file = "{tmp_path / "introspection.secret"}"\n')
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=extra)

    def opaque(client):
        r = httpx.post(f"{idp.issuer}/token", auth=(client, f"{client}-secret"),
                       data={"grant_type": "client_credentials", "scope": "mcp", "resource": "urn:sluice:test:opaque"})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    tok, later = opaque("support-agent"), opaque("finance-reviewer")
    assert tok.count(".") != 2, "an opaque token"
    for _ in range(3):
        r = call(g, tok)
        assert r.status_code == 200, r.text
    assert tok not in up.requests[-1].decode(), "the agent's token is for the gateway only"
    assert g.metric("sluice_identity_introspections_total", outcome="active") == 1, "held, not asked again"
    for _ in range(2):
        r = call(g, "made-up-token-4f9a2c")
        assert r.status_code == 401 and "is not active" in r.json()["error"]["data"]["reason"], r.text
    assert g.metric("sluice_identity_introspections_total", outcome="refused_or_failed") == 1
    assert call(g, idp.token()).status_code == 200 and call(g, headers={"x-api-key": API_KEY}).status_code == 200
    # Reviewers on the admin listener may hold opaque tokens too.
    r = httpx.get(g.admin("/approvals"), headers={"authorization": f"Bearer {tok}"}, timeout=10)
    assert r.status_code == 200 and r.json()["reviewer"] == "support-agent", r.text
    r = httpx.get(g.admin("/approvals"), headers={"authorization": "Bearer made-up-token-4f9a2c"}, timeout=10)
    assert r.status_code == 401 and "is not active" in r.json()["error"], r.text
    idp.stop()
    assert call(g, tok).status_code == 200, "held while the provider is down"
    r = call(g, later)
    assert r.status_code == 503 and r.headers["retry-after"] == "2" and "www-authenticate" not in r.headers, r.text
    assert "could not be asked about the token" in r.json()["error"]["data"]["reason"], r.text
    g.proc.stop()
    ids = [e["identity"] for e in spool_events(g.spool) if e["kind"] == "request"]
    assert {"subject": "support-agent", "groups": ["support", "readers"], "agent_type": "assistant", "via": "introspection"} in ids, ids
    spooled = json.dumps(spool_events(g.spool))
    assert tok not in spooled and later not in spooled and tok not in g.proc.log.read_text()


def test_tokens_of_every_trusted_issuer_are_accepted_and_of_no_other(idp, gateway, raw_upstream, tmp_path):
    """`[[identity.also_trust]]`: a second identity provider (one being migrated to, a
    partner's) is trusted as well, each token checked by the issuer it names with that
    issuer's keys and audience. A third provider's token is refused (iss); a token claiming the
    second issuer but signed with the first one's key is refused (that key is not the second
    issuer's); the resource metadata names both authorization servers."""
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    _, jb = new_key("kb")
    _, jc = new_key("kc")
    second, stranger = OP(tmp_path / "b", [jb]), OP(tmp_path / "c", [jc])
    try:
        up = echo_upstream(raw_upstream)
        extra = identity_cfg(idp) + f'[[identity.also_trust]]\nissuer = "{second.issuer}"\naudience = ["{AUDIENCE}"]\n'
        g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=extra)
        assert call(g, idp.token()).status_code == 200
        r = call(g, second.token("finance-reviewer"))
        assert r.status_code == 200, r.text
        r = call(g, stranger.token())
        assert r.status_code == 401 and "issuer this gateway does not trust (iss)" in r.json()["error"]["data"]["reason"], r.text
        now = int(time.time())
        forged = jwt.encode({"iss": second.issuer, "aud": AUDIENCE, "sub": "mallory", "iat": now, "exp": now + 300},
                            idp.k1, algorithm="RS256", headers={"kid": "k1"})
        r = call(g, forged)
        assert r.status_code == 401 and "kid k1" in r.json()["error"]["data"]["reason"], r.text
        md = httpx.get(g.url("/.well-known/oauth-protected-resource"), timeout=5).json()
        assert md["authorization_servers"] == [idp.issuer, second.issuer], md
        g.proc.stop()
        ids = [e["identity"] for e in spool_events(g.spool) if e["kind"] == "request"]
        assert {"subject": "finance-reviewer", "groups": ["finance"], "agent_type": "human", "via": "jwt"} in ids, ids
        assert not any(i and i.get("subject") == "mallory" for i in ids)
    finally:
        second.stop()
        stranger.stop()


def test_rotated_provider_keys_are_fetched_on_an_unknown_kid(idp, gateway, raw_upstream):
    up = echo_upstream(raw_upstream)
    g = gateway([{"path": "/mcp", "upstream": up.url()}], extra=identity_cfg(idp))
    assert call(g, idp.token()).status_code == 200
    # The provider rotates to a new key; the gateway has only the old one cached.
    k2, j2 = new_key("k2")
    idp.stop()
    idp.start([j2])
    tok = idp.token()
    assert jwt.get_unverified_header(tok)["kid"] == "k2"
    r = call(g, tok)
    assert r.status_code == 200, r.text


def test_a_session_answers_only_the_caller_that_opened_it(idp, gateway, py_json):
    """An MCP session id is not a credential: another authenticated caller presenting one
    (learned from a log, a shared proxy) would continue that session's upstream state and write
    into its record. The gateway binds each session to the subject that opened it."""
    g = gateway([{"path": "/mcp", "upstream": py_json}], extra=identity_cfg(idp))
    owner, other = idp.token("support-agent"), idp.token("intern-agent")

    def post(token, msg, sid=None, extra=None):
        h = {**ACCEPT, "authorization": f"Bearer {token}", "mcp-protocol-version": "2025-06-18", **(extra or {})}
        if sid:
            h["mcp-session-id"] = sid
        return httpx.post(g.url(), json=msg, headers=h, timeout=10)

    r = post(owner, INIT)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    assert post(owner, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid).status_code == 202
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    for token, headers in [(other, None), (None, {"x-api-key": API_KEY})]:
        r = post(token or "", listing, sid, headers) if token else httpx.post(g.url(), json=listing, headers={**ACCEPT, "mcp-session-id": sid, **headers}, timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == -32600, r.text
        assert "start one with initialize" in r.json()["error"]["data"]["reason"]
    r = httpx.delete(g.url(), headers={"authorization": f"Bearer {other}", "mcp-session-id": sid}, timeout=10)
    assert r.status_code == 404, "nor may it end the session"
    r = post(owner, listing, sid)
    assert r.status_code == 200 and r.json()["result"]["tools"], r.text
    sessions = g.get_admin("/sessions")
    assert [s["owner"] for s in sessions["sessions"] if sid.endswith("." + s["mcp_session_id"])] == ["support-agent"], sessions
    g.proc.stop()
    events = spool_events(g.spool)
    gid = next(e["session"] for e in events if e["kind"] == "session_start")
    in_session = [e for e in events if e.get("session") == gid]
    assert {e["identity"]["subject"] for e in in_session if e.get("identity")} == {"support-agent"}, "nothing of the other callers in the session's record"
    refused = [e for e in events if e["kind"] == "decision" and e["decision"]["stage"] == "protocol"]
    assert sorted(e["identity"]["subject"] for e in refused) == ["ci-bot", "intern-agent", "intern-agent"] and all(e["status"] == 404 and "session" not in e for e in refused), refused


def test_a_session_is_bound_to_its_caller_on_every_gateway_of_the_deployment(idp, gateway, py_json, tmp_path):
    """The binding travels in the session id itself (a keyed tag over the caller): a gateway that
    never saw the session opened refuses it to another caller just the same."""
    key = tmp_path / "session.key"
    key.write_bytes(b"k" * 32)
    extra = identity_cfg(idp) + f'[sessions]\nkey_file = "{key}"\n'
    a = gateway([{"path": "/mcp", "upstream": py_json}], extra=extra, home="a")
    b = gateway([{"path": "/mcp", "upstream": py_json}], extra=extra, home="b")
    owner, other = idp.token("support-agent"), idp.token("intern-agent")
    h = lambda tok, sid=None: {**ACCEPT, "authorization": f"Bearer {tok}", "mcp-protocol-version": "2025-06-18", **({"mcp-session-id": sid} if sid else {})}  # noqa: E731
    r = httpx.post(a.url(), json=INIT, headers=h(owner), timeout=10)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    for tok, hdrs in [(other, h(other, sid)), (None, {**ACCEPT, "x-api-key": API_KEY, "mcp-session-id": sid})]:
        r = httpx.post(b.url(), json=listing, headers=hdrs, timeout=10)
        assert r.status_code == 404 and "start one with initialize" in r.json()["error"]["data"]["reason"], r.text
    assert b.get_admin("/sessions")["count"] == 0, "a refused caller does not open the session here"
    r = httpx.post(b.url(), json=listing, headers=h(owner, sid), timeout=10)
    assert r.status_code == 200 and r.json()["result"]["tools"], r.text
    assert [s["owner"] for s in b.get_admin("/sessions")["sessions"]] == ["support-agent"]
