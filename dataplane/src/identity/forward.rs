//! The caller's identity told to an upstream (`upstream.forward_identity`), so that a server
//! doing its own authorization knows on whose behalf the agent calls:
//! - `headers`: `X-Sluice-Subject`, `X-Sluice-Groups`, `X-Sluice-Agent-Type`, `X-Sluice-Via`,
//!   `X-Sluice-Session` — for upstreams reached only through the gateway;
//! - `token`: `X-Sluice-Identity`, a short-lived JWT the gateway signs (EdDSA, the key of
//!   `[identity.assertion]`) for the upstream's audience, which the upstream verifies with the
//!   gateway's public key (`sluice identity jwks`, admin `GET /identity/jwks`).
//!
//! Whatever an agent sends under `X-Sluice-*` never reaches an upstream (the exchange drops
//! those names). Assertions are signed once per caller and session per worker and reused until
//! half their lifetime is gone.

use super::Identity;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer as _, SigningKey};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The header prefix the gateway owns towards upstreams.
pub const PREFIX: &str = "x-sluice-";

/// How an upstream hears of the caller.
#[derive(Debug, Clone)]
pub enum Forwarding {
    Headers,
    Token { signer: Arc<Signer>, audience: String },
}

/// The gateway's assertion key and what every assertion says besides the caller.
pub struct Signer {
    key: SigningKey,
    /// Unique per signer made in this process (the assertion cache tells signers apart by it).
    serial: u64,
    pub kid: String,
    pub issuer: String,
    pub lifetime: Duration,
    /// `{"alg":"EdDSA","typ":"JWT","kid":…}`, base64url.
    header: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer {{ kid: {:?}, issuer: {:?}, lifetime: {:?}, key: *** }}", self.kid, self.issuer, self.lifetime)
    }
}

/// base64url without padding (RFC 7515).
pub fn b64url(input: &[u8]) -> String {
    let mut s = crate::config::credential::base64(input);
    while s.ends_with('=') {
        s.pop();
    }
    s.replace('+', "-").replace('/', "_")
}

impl Signer {
    /// An Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem: &str, issuer: String, lifetime: Duration) -> Result<Self, String> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| format!("not an Ed25519 private key in PKCS#8 PEM ({e}); make one with: openssl genpkey -algorithm ed25519 -out FILE"))?;
        let public = key.verifying_key().to_bytes();
        let kid = blake3::hash(&public).to_hex()[..16].to_owned();
        let header = b64url(serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid }).to_string().as_bytes());
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Signer { key, serial, kid, issuer, lifetime, header })
    }

    /// The public key as a JWK set, for upstreams to verify assertions with.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": b64url(&self.key.verifying_key().to_bytes()), "kid": self.kid, "alg": "EdDSA", "use": "sig" }] })
    }

    /// A signed JWT of these claims.
    pub fn sign_claims(&self, claims: &serde_json::Value) -> String {
        let mut out = String::with_capacity(self.header.len() + 400);
        out.push_str(&self.header);
        out.push('.');
        out.push_str(&b64url(claims.to_string().as_bytes()));
        let sig = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&b64url(&sig.to_bytes()));
        out
    }

    /// An RFC 7523 client assertion (`private_key_jwt`): the gateway as `client_id`, for the
    /// authorization server `audience`, valid for a minute, never reused (`jti`).
    pub fn client_assertion(&self, client_id: &str, audience: &str, now: SystemTime) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.sign_claims(&serde_json::json!({ "iss": client_id, "sub": client_id, "aud": audience, "iat": iat, "nbf": iat, "exp": iat + 60, "jti": crate::ids::new_id() }))
    }

    /// A signed assertion of `who` for `audience`, issued at `now`.
    pub fn sign(&self, who: &Identity, session: Option<&str>, audience: &str, now: SystemTime) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut claims = serde_json::json!({
            "iss": self.issuer, "sub": who.subject, "aud": audience,
            "iat": iat, "nbf": iat, "exp": iat + self.lifetime.as_secs().max(1),
            "jti": crate::ids::new_id(),
            "groups": who.groups, "via": who.via,
        });
        if let Some(t) = &who.agent_type {
            claims["agent_type"] = t.as_str().into();
        }
        if let Some(s) = session {
            claims["sid"] = s.into();
        }
        self.sign_claims(&claims)
    }
}

/// A header value from free text: kept as is when it is visible ASCII (or space) without `,`
/// or `%`, otherwise those bytes percent-encoded (UTF-8), so a value never ends a header line,
/// never splits a list, and decodes back exactly.
pub fn push_value(out: &mut Vec<u8>, v: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in v.bytes() {
        if (b.is_ascii_graphic() && b != b',' && b != b'%') || b == b' ' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// The identity headers of `headers` mode, written into a request head.
pub fn write_headers(out: &mut Vec<u8>, who: &Identity, session: Option<&str>) {
    let mut line = |name: &str, values: &mut dyn Iterator<Item = &str>| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        for (i, v) in values.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_value(out, v);
        }
        out.extend_from_slice(b"\r\n");
    };
    line("x-sluice-subject", &mut std::iter::once(who.subject.as_str()));
    line("x-sluice-groups", &mut who.groups.iter().map(String::as_str));
    line("x-sluice-via", &mut std::iter::once(who.via));
    if let Some(t) = &who.agent_type {
        line("x-sluice-agent-type", &mut std::iter::once(t.as_str()));
    }
    if let Some(s) = session {
        line("x-sluice-session", &mut std::iter::once(s));
    }
}

struct Entry {
    /// The signer's serial (never reused, unlike an address a reload frees).
    signer: u64,
    audience: String,
    who: Identity,
    session: Option<String>,
    token: Rc<str>,
    fresh_until: Instant,
}

/// A worker's signed assertions, reused per caller, session and upstream until half their
/// lifetime is gone (signing costs tens of microseconds; a lookup, none of that).
#[derive(Default)]
pub struct Cache {
    entries: HashMap<u64, Entry>,
}

/// Entries a worker keeps before it starts afresh.
const CACHE_MAX: usize = 4096;

impl Cache {
    pub fn assertion(&mut self, signer: &Arc<Signer>, audience: &str, who: &Identity, session: Option<&str>) -> Rc<str> {
        let at = signer.serial;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (at, audience, &who.subject, session).hash(&mut h);
        let key = h.finish();
        let now = Instant::now();
        if let Some(e) = self.entries.get(&key) {
            let same = e.signer == at && e.audience == audience && e.session.as_deref() == session && e.who.subject == who.subject && e.who.groups == who.groups && e.who.agent_type == who.agent_type && e.who.via == who.via;
            if same && now < e.fresh_until {
                return e.token.clone();
            }
        }
        if self.entries.len() >= CACHE_MAX {
            self.entries.clear();
        }
        let token: Rc<str> = signer.sign(who, session, audience, SystemTime::now()).into();
        let who = Identity { claims: None, ..who.clone() };
        self.entries.insert(key, Entry { signer: at, audience: audience.to_owned(), who, session: session.map(str::to_owned), token: token.clone(), fresh_until: now + signer.lifetime / 2 });
        token
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// RFC 8032 test 1's secret key in PKCS#8 PEM.
    pub(crate) const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";

    fn who() -> Identity {
        Identity { subject: "alice@example.com".into(), groups: vec!["support".into(), "a,b".into()], agent_type: Some("assistant".into()), via: "jwt", claims: None }
    }

    pub(crate) fn decode(part: &str) -> Vec<u8> {
        let t: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in part.bytes() {
            bits = (bits << 6) | t.iter().position(|&x| x == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }

    #[test]
    fn an_assertion_verifies_with_the_published_key_and_says_who_for_whom_until_when() {
        let s = Signer::from_pem(PEM, "https://sluice.example".into(), Duration::from_secs(300)).unwrap();
        let jwks = s.jwks();
        // RFC 8032 test 1's public key.
        assert_eq!(decode(jwks["keys"][0]["x"].as_str().unwrap()), hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"));
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = s.sign(&who(), Some("01JSESSION"), "https://tickets.internal", now);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": s.kid}));
        let claims: serde_json::Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(claims["sub"], "alice@example.com");
        assert_eq!(claims["aud"], "https://tickets.internal");
        assert_eq!(claims["iss"], "https://sluice.example");
        assert_eq!((claims["iat"].as_u64(), claims["exp"].as_u64()), (Some(1_800_000_000), Some(1_800_000_300)));
        assert_eq!(claims["groups"], serde_json::json!(["support", "a,b"]));
        assert_eq!((claims["agent_type"].as_str(), claims["via"].as_str(), claims["sid"].as_str()), (Some("assistant"), Some("jwt"), Some("01JSESSION")));
        let public = ed25519_dalek::VerifyingKey::from_bytes(&<[u8; 32]>::try_from(decode(jwks["keys"][0]["x"].as_str().unwrap())).unwrap()).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&decode(parts[2])).unwrap();
        public.verify_strict(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).expect("verifies");
        // Any change to the claims breaks it.
        let mut forged = claims.clone();
        forged["sub"] = "mallory".into();
        let forged = format!("{}.{}", parts[0], b64url(forged.to_string().as_bytes()));
        assert!(public.verify_strict(forged.as_bytes(), &sig).is_err());
        assert!(Signer::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "x".into(), Duration::from_secs(1)).unwrap_err().contains("openssl genpkey -algorithm ed25519"));
        assert!(!format!("{s:?}").contains("MC4C"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn header_values_keep_lists_and_lines_whole_and_decode_back() {
        let mut w = who();
        w.subject = "Zoë\r\nX-Sluice-Subject: root".into();
        let mut out = Vec::new();
        write_headers(&mut out, &w, Some("S1"));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "x-sluice-subject: Zo%C3%AB%0D%0AX-Sluice-Subject: root\r\nx-sluice-groups: support,a%2Cb\r\nx-sluice-via: jwt\r\nx-sluice-agent-type: assistant\r\nx-sluice-session: S1\r\n"
        );
        let mut v = Vec::new();
        push_value(&mut v, "100%");
        assert_eq!(v, b"100%25");
    }

    #[test]
    fn the_cache_reuses_an_assertion_for_the_same_caller_and_signs_anew_for_any_difference() {
        let s = Arc::new(Signer::from_pem(PEM, "sluice".into(), Duration::from_secs(300)).unwrap());
        let mut c = Cache::default();
        let a = c.assertion(&s, "up", &who(), Some("S1"));
        assert!(Rc::ptr_eq(&a, &c.assertion(&s, "up", &who(), Some("S1"))), "reused");
        assert!(!Rc::ptr_eq(&a, &c.assertion(&s, "up", &who(), Some("S2"))), "another session");
        assert!(!Rc::ptr_eq(&a, &c.assertion(&s, "other", &who(), Some("S1"))), "another upstream");
        let mut fewer = who();
        fewer.groups.pop();
        let b = c.assertion(&s, "up", &fewer, Some("S1"));
        assert!(!Rc::ptr_eq(&a, &b), "groups changed within the session: signed anew");
        let s2 = Arc::new(Signer::from_pem(PEM, "sluice".into(), Duration::from_secs(300)).unwrap());
        assert!(!Rc::ptr_eq(&b, &c.assertion(&s2, "up", &fewer, Some("S1"))), "a reloaded key signs anew");
        let short = Arc::new(Signer::from_pem(PEM, "sluice".into(), Duration::from_secs(0)).unwrap());
        let x = c.assertion(&short, "up", &who(), None);
        assert!(!Rc::ptr_eq(&x, &c.assertion(&short, "up", &who(), None)), "past half its lifetime: signed anew");
    }
}
