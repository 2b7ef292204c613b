"""The caller's identity told to upstreams (`upstream.forward_identity`): as headers, or as an
assertion the gateway signs (EdDSA JWT) that the upstream verifies with the gateway's public
key — checked here with PyJWT, an independent implementation, against the key the admin API
and `sluice jwks` publish. Callers are authenticated by the real OpenID Provider."""

import base64
import json
import subprocess
import time

import httpx
import jwt

from conftest import SLUICE
from test_identity import API_KEY, echo_upstream, idp, identity_cfg  # noqa: F401 (idp is a fixture)

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "lookup", "arguments": {}}}
SPOOFED = {"x-sluice-subject": "root", "X-Sluice-Groups": "admins", "x-sluice-identity": "forged.token.here"}


def headers_of(request: bytes) -> list:
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    return [tuple(p.strip() for p in line.split(":", 1)) for line in head.split("\r\n")[1:]]


def sluice_headers(request: bytes) -> dict:
    out = {}
    for n, v in headers_of(request):
        if n.lower().startswith("x-sluice-"):
            assert n.lower() not in out, f"{n} sent twice"
            out[n.lower()] = v
    return out


def keyfile(tmp_path):
    path = tmp_path / "assertion.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True, capture_output=True)
    return path


def configure(g, upstream_keys: dict, reloads=1):
    """Add keys to upstreams u0, u1, … of the fixture's config and reload."""
    cfg = g.config.read_text()
    for name, keys in upstream_keys.items():
        cfg = cfg.replace(f'[[upstream]]\nname = "{name}"\n', f'[[upstream]]\nname = "{name}"\n{keys}')
    g.config.write_text(cfg)
    g.proc.p.send_signal(1)
    for _ in range(100):
        if g.metric("sluice_config_reloads_total") >= reloads:
            return
        time.sleep(0.1)
    raise AssertionError(f"not reloaded:\n{g.proc.text()[-2000:]}")


def test_upstreams_hear_who_calls_signed_or_as_headers_and_never_what_the_agent_claims(idp, gateway, raw_upstream, tmp_path):
    signed, plain, neither = echo_upstream(raw_upstream), echo_upstream(raw_upstream), echo_upstream(raw_upstream)
    key = keyfile(tmp_path)
    extra = identity_cfg(idp) + f'[identity.assertion]\nkey_file = "{key}"\nissuer = "https://sluice.test"\nlifetime = "2m"\n'
    g = gateway([{"path": "/signed", "upstream": signed.url()}, {"path": "/plain", "upstream": plain.url()}, {"path": "/neither", "upstream": neither.url()}], extra=extra)
    configure(g, {"u0": 'forward_identity = "token"\nidentity_audience = "https://tickets.test"\n', "u1": 'forward_identity = "headers"\n'})
    tok = idp.token()
    auth = {**ACCEPT, **SPOOFED, "authorization": f"Bearer {tok}"}

    # Signed: one X-Sluice-Identity, the gateway's; it verifies with the published key.
    assert httpx.post(g.url("/signed"), json=CALL, headers=auth, timeout=10).status_code == 200
    got = sluice_headers(signed.requests[-1])
    assert set(got) == {"x-sluice-identity"} and got["x-sluice-identity"] != "forged.token.here", got
    published = json.loads(httpx.get(g.admin("/identity/jwks"), timeout=5).text)
    cli = subprocess.run([str(SLUICE), "jwks", "--config", str(g.config)], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0 and json.loads(cli.stdout) == published, cli.stderr
    [k] = published["keys"]
    assert (k["kty"], k["crv"], k["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assertion = got["x-sluice-identity"]
    assert jwt.get_unverified_header(assertion)["kid"] == k["kid"]
    claims = jwt.decode(assertion, jwt.PyJWK(k).key, algorithms=["EdDSA"], audience="https://tickets.test", issuer="https://sluice.test")
    assert claims["sub"] == "support-agent" and claims["groups"] == ["support", "readers"], claims
    assert (claims["agent_type"], claims["via"], claims["exp"] - claims["iat"]) == ("assistant", "jwt", 120), claims
    # Tampered, or for another audience: refused by the upstream's check.
    h, p, s = assertion.split(".")
    forged = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    forged["sub"] = "root"
    forged_p = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    for bad, aud in [(f"{h}.{forged_p}.{s}", "https://tickets.test"), (assertion, "https://other.test")]:
        try:
            jwt.decode(bad, jwt.PyJWK(k).key, algorithms=["EdDSA"], audience=aud)
            raise AssertionError("accepted")
        except jwt.InvalidTokenError:
            pass
    # The same caller again: the same assertion (signed once per worker and caller); another caller: its own.
    for _ in range(3):
        httpx.post(g.url("/signed"), json=CALL, headers=auth, timeout=10)
    seen = {sluice_headers(r)["x-sluice-identity"] for r in signed.requests}
    assert len(seen) <= 2, "at most one per worker (2 workers)"
    httpx.post(g.url("/signed"), json=CALL, headers={**ACCEPT, "x-api-key": API_KEY}, timeout=10)
    bot = jwt.decode(sluice_headers(signed.requests[-1])["x-sluice-identity"], jwt.PyJWK(k).key, algorithms=["EdDSA"], audience="https://tickets.test")
    assert (bot["sub"], bot["via"], bot["groups"]) == ("ci-bot", "api_key", ["ci"]), bot

    # Headers: the gateway's, not the agent's.
    assert httpx.post(g.url("/plain"), json=CALL, headers=auth, timeout=10).status_code == 200
    got = sluice_headers(plain.requests[-1])
    assert got == {"x-sluice-subject": "support-agent", "x-sluice-groups": "support,readers", "x-sluice-via": "jwt", "x-sluice-agent-type": "assistant"}, got

    # An upstream that asked for nothing hears nothing of it, spoofed or not.
    assert httpx.post(g.url("/neither"), json=CALL, headers=auth, timeout=10).status_code == 200
    assert sluice_headers(neither.requests[-1]) == {}


def test_sluice_check_names_what_forwarding_the_identity_needs(tmp_path):
    def check(text):
        cfg = tmp_path / "sluice.toml"
        cfg.write_text('[[listener]]\naddress = "127.0.0.1:0"\n[[route]]\npath = "/mcp"\nupstream = "api"\n' + text)
        r = subprocess.run([str(SLUICE), "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, r.stdout
        return r.stdout + r.stderr

    up = '[[upstream]]\nname = "api"\nurl = "http://127.0.0.1:9"\n'
    out = check(up + 'forward_identity = "headers"\n')
    assert "upstream[0].forward_identity" in out and "configure [identity]" in out, out
    ident = '[identity]\n[[identity.api_key]]\nsubject = "a"\nsha256 = "' + "0" * 64 + '"\n'
    out = check(up + 'forward_identity = "token"\n' + ident)
    assert "upstream[0].forward_identity" in out and "[identity.assertion] key_file" in out and "openssl genpkey" in out, out
    (tmp_path / "rsa.pem").write_bytes(subprocess.run(["openssl", "genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024"], capture_output=True, check=True).stdout)
    out = check(up + 'forward_identity = "token"\n' + ident + f'[identity.assertion]\nkey_file = "{tmp_path / "rsa.pem"}"\n')
    assert "identity.assertion.key_file" in out and "not an Ed25519 private key" in out, out
    out = check(up + 'forward_identity = "jwt"\nidentity_audience = "x"\n' + ident)
    assert "\"jwt\" is not a way to forward the identity" in out, out
