//! Identity: who is calling. A bearer JWT is checked against the issuer's published keys
//! (OIDC discovery → JWKS, see [`jwks`]): signature with an accepted asymmetric algorithm
//! (`none` and HMAC are never accepted, so a public key can never be used as an HMAC
//! secret), `iss`, `aud`, `exp`, `nbf` with clock skew. Subject, groups and agent type come
//! from configurable claim paths. Service agents may use API keys (stored as SHA-256).
//! mTLS client certificates are not yet an identity source.
//!
//! Runs on the request path before any message is parsed: the check is CPU only (keys are
//! cached); an unknown `kid` asks the fetching thread for a refetch and the caller waits on
//! its core's timer, never blocking it.

pub mod forward;
pub mod introspect;
pub mod jwks;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
    pub agent_type: Option<String>,
    /// `jwt`, `introspection` (an opaque token the issuer described), `api_key`, `mtls`.
    pub via: &'static str,
    /// Every claim of the token (a JWT's, or the introspection answer's), for policy
    /// conditions (`identity.claims`).
    pub claims: Option<Arc<serde_json::Value>>,
}

impl Identity {
    /// Did the caller authenticate with the identity provider's access token (a JWT, or an
    /// opaque token read by introspection)?
    pub fn bearer(&self) -> bool {
        self.via == "jwt" || self.via == "introspection"
    }
}

/// Why a caller is not authenticated. The text is shown to the agent: it says what to do and
/// never echoes the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `Authorization: Bearer <access token>` (the authorization server is named in this resource's metadata) or an API key")]
    Missing,
    #[error("the bearer token is not a well-formed JWT ({0}); get a new access token")]
    Malformed(String),
    #[error("the token is signed with {0}, which this gateway does not accept; tokens must be signed by the issuer's published keys ({1})")]
    Algorithm(String, String),
    #[error("the token was signed with a key the issuer does not publish (kid {0}); get a new access token")]
    UnknownKey(String),
    #[error("the token {0}; get a new access token")]
    Invalid(&'static str),
    #[error("the token has no usable `{0}` claim")]
    Claim(String),
    #[error("the client certificate has no {0} to name the caller; ask for a certificate that has one")]
    CertificateName(&'static str),
    #[error("the API key is not known to this gateway")]
    UnknownApiKey,
    /// An opaque token the issuer's introspection does not vouch for.
    #[error("the token {0}; get a new access token")]
    Refused(String),
    /// The issuer's introspection endpoint could not be asked (answered 503, not 401).
    #[error("the issuer could not be asked about the token ({0}); retry shortly")]
    IssuerUnavailable(String),
}

/// Checking JWTs from one issuer.
#[derive(Debug)]
pub struct JwtCheck {
    pub jwks: Arc<jwks::Jwks>,
    pub audience: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub skew_secs: u64,
    pub subject_claim: String,
    pub groups_claim: String,
    pub agent_type_claim: Option<String>,
    /// Tokens already verified (an agent sends the same one with every call).
    pub verified: Verified,
}

/// JWTs already verified, by the blake3 of the token (never the token): the identity, until
/// when it holds (the token's `exp` with the clock skew, at most [`VERIFIED_FOR`] on), and the
/// issuer's key set it was verified with — fetched keys (rotated, a key withdrawn) verify
/// afresh. 16 shards, at most [`VERIFIED_MAX`] tokens.
#[derive(Debug)]
pub struct Verified(Box<[VerifiedShard]>);

/// Verified tokens by digest: the identity, until when it is taken, the key set's version then.
type VerifiedShard = parking_lot::Mutex<HashMap<[u8; 32], (Identity, SystemTime, u64)>>;

/// The longest a verified token is taken without verifying it again.
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);
const VERIFIED_MAX: usize = 65_536;
const VERIFIED_SHARDS: usize = 16;

impl Default for Verified {
    fn default() -> Self {
        Verified((0..VERIFIED_SHARDS).map(|_| parking_lot::Mutex::new(HashMap::new())).collect())
    }
}

impl Verified {
    fn get(&self, key: &[u8; 32], keys_version: u64, now: SystemTime) -> Option<Identity> {
        match self.0[key[0] as usize % VERIFIED_SHARDS].lock().get(key) {
            Some((id, until, v)) if *v == keys_version && now < *until => Some(id.clone()),
            _ => None,
        }
    }

    fn put(&self, key: [u8; 32], id: Identity, until: SystemTime, keys_version: u64, now: SystemTime) {
        let mut shard = self.0[key[0] as usize % VERIFIED_SHARDS].lock();
        if shard.len() >= VERIFIED_MAX / VERIFIED_SHARDS {
            shard.retain(|_, (_, u, v)| *u > now && *v == keys_version);
            if shard.len() >= VERIFIED_MAX / VERIFIED_SHARDS {
                shard.clear();
            }
        }
        shard.insert(key, (id, until, keys_version));
    }
}

#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub sha256: [u8; 32],
    pub identity: Identity,
}

/// The compiled `[identity]` (part of the config; swapped whole on reload).
#[derive(Debug)]
pub struct Authenticator {
    /// Without a valid credential the call is refused (401).
    pub required: bool,
    /// The issuers whose JWTs are accepted (the main one first); a token is checked by the
    /// one its `iss` names.
    pub issuers: Vec<JwtCheck>,
    pub api_keys: Vec<ApiKeyEntry>,
    /// Resource identifier for the protected-resource metadata, if configured.
    pub resource: Option<String>,
    /// Verified client certificates as identities.
    pub mtls: Option<MtlsCheck>,
    /// Opaque bearer tokens read by the issuer's introspection endpoint.
    pub introspection: Option<Arc<introspect::Introspector>>,
}

/// How a verified client certificate names the caller.
#[derive(Debug, Clone)]
pub struct MtlsCheck {
    /// Take the subject from the first subject alternative name instead of the common name.
    pub by_san: bool,
    /// Groups and agent type per subject (subjects not listed have none).
    pub clients: Vec<(String, Vec<String>, Option<String>)>,
}

impl MtlsCheck {
    pub fn identity(&self, peer: &crate::tls::PeerNames) -> Result<Identity, AuthError> {
        let subject = if self.by_san { peer.sans.first() } else { peer.cn.as_ref() }.ok_or(AuthError::CertificateName(if self.by_san { "a subject alternative name" } else { "a common name" }))?;
        let (groups, agent_type) = self.clients.iter().find(|(s, ..)| s == subject).map(|(_, g, a)| (g.clone(), a.clone())).unwrap_or_default();
        Ok(Identity { subject: subject.clone(), groups, agent_type, via: "mtls", claims: None })
    }
}

/// A claim by dot-separated path.
fn claim<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
        Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

impl JwtCheck {
    /// The caller a JWT names: verified, or taken from [`Verified`] when this very token was
    /// verified with the current keys and has not expired since.
    pub fn check(&self, token: &str) -> Result<Identity, AuthError> {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        let (version, now) = (self.jwks.version(), SystemTime::now());
        if let Some(id) = self.verified.get(&key, version, now) {
            return Ok(id);
        }
        let id = self.verify(token)?;
        let exp = id.claims.as_deref().and_then(|c| c.get("exp")).and_then(serde_json::Value::as_u64).map(|e| UNIX_EPOCH + Duration::from_secs(e + self.skew_secs));
        let until = exp.map_or(now, |e| e.min(now + VERIFIED_FOR));
        self.verified.put(key, id.clone(), until, version, now);
        Ok(id)
    }

    /// Verify a JWT: signature by the issuer's published key, `iss`, `aud`, `exp`, `nbf`.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let accepted = || self.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg), accepted()));
        }
        let keys = self.jwks.keys();
        let kid = header.kid.clone().unwrap_or_default();
        let jwk = match &header.kid {
            Some(k) => keys.find(k),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| AuthError::UnknownKey(if kid.is_empty() { "missing".into() } else { kid.clone() }))?;
        // A key published for one algorithm is never used with another.
        if let Some(ka) = jwk.common.key_algorithm {
            if format!("{ka:?}") != format!("{:?}", header.alg) {
                return Err(AuthError::Algorithm(format!("{:?}", header.alg), format!("key {kid} is for {ka:?}")));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Malformed(format!("published key {kid}: {e}")))?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.skew_secs;
        v.validate_nbf = true;
        v.set_issuer(&[&self.jwks.issuer]);
        v.set_audience(&self.audience);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Invalid(match e.kind() {
                K::ExpiredSignature => "has expired",
                K::ImmatureSignature => "is not valid yet (nbf)",
                K::InvalidAudience => "is not meant for this gateway (aud)",
                K::InvalidIssuer => "comes from an issuer this gateway does not trust (iss)",
                K::InvalidSignature => "signature does not verify",
                K::MissingRequiredClaim(_) => "lacks a required claim (exp, iss, aud)",
                _ => "is not valid",
            })
        })?;
        let c = &data.claims;
        let subject = claim(c, &self.subject_claim).and_then(|s| s.as_str()).ok_or_else(|| AuthError::Claim(self.subject_claim.clone()))?;
        Ok(Identity {
            subject: subject.to_owned(),
            groups: strings(claim(c, &self.groups_claim)),
            agent_type: self.agent_type_claim.as_deref().and_then(|p| claim(c, p)).and_then(|s| s.as_str()).map(str::to_owned),
            via: "jwt",
            claims: Some(Arc::new(data.claims.clone())),
        })
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(authz: Option<&str>) -> Option<&str> {
    let (scheme, token) = authz?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The same, when the token is not shaped as a JWT.
pub fn opaque_bearer(authz: Option<&str>) -> Option<&str> {
    bearer(authz).filter(|t| !t.is_empty() && t.matches('.').count() != 2)
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// The caller's identity from its `Authorization` and `X-API-Key` headers. `Ok(None)`: no
    /// credential and none required (anonymous).
    pub fn check(&self, authorization: Option<&str>, api_key: Option<&str>) -> Result<Option<Identity>, AuthError> {
        let bearer = bearer(authorization);
        let (jwt, key) = match (bearer, api_key) {
            (Some(t), _) if t.matches('.').count() == 2 => (Some(t), None),
            (Some(t), _) => (None, Some(t)),
            (None, k) => (None, k.map(str::trim)),
        };
        if let Some(t) = jwt {
            if self.issuers.is_empty() {
                return Err(AuthError::Algorithm("a JWT".into(), "this gateway accepts API keys only".into()));
            }
            return match self.issuer_of(t) {
                Some(j) => j.check(t).map(Some),
                None => Err(AuthError::Invalid("comes from an issuer this gateway does not trust (iss)")),
            };
        }
        if let Some(k) = key {
            let d: [u8; 32] = Sha256::digest(k.as_bytes()).into();
            let mut found = None;
            for e in &self.api_keys {
                if same(&e.sha256, &d) {
                    found = Some(e.identity.clone());
                }
            }
            return found.map(Some).ok_or(AuthError::UnknownApiKey);
        }
        if self.required {
            Err(AuthError::Missing)
        } else {
            Ok(None)
        }
    }

    /// Like [`Authenticator::check`], reading an opaque token by introspection while the
    /// thread waits (threads of their own only: the admin listener's reviewers).
    pub fn check_blocking(&self, authorization: Option<&str>, api_key: Option<&str>) -> Result<Option<Identity>, AuthError> {
        match self.check(authorization, api_key) {
            Err(AuthError::UnknownApiKey) => match (self.introspection.as_ref(), opaque_bearer(authorization)) {
                (Some(i), Some(token)) => {
                    let slot = match i.lookup(token) {
                        crate::offload::Lookup::Wait(slot) => slot,
                        now => return introspect::outcome(Some(now)).map(Some),
                    };
                    introspect::outcome(crate::offload::wait_blocking(&slot, introspect::WAIT).map(crate::offload::Lookup::from)).map(Some)
                }
                _ => Err(AuthError::UnknownApiKey),
            },
            other => other,
        }
    }

    /// Like [`Authenticator::check`], with the caller's verified client certificate: an explicit
    /// credential (bearer token, API key) names the caller; otherwise the certificate does.
    pub fn check_with_peer(&self, authorization: Option<&str>, api_key: Option<&str>, peer: Option<&crate::tls::PeerNames>) -> Result<Option<Identity>, AuthError> {
        let explicit = authorization.is_some_and(|a| a.trim_start().get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer "))) || api_key.is_some();
        match (&self.mtls, peer) {
            (Some(m), Some(p)) if !explicit => m.identity(p).map(Some),
            _ => self.check(authorization, api_key),
        }
    }

    /// The check for a JWT: by the issuer its (not yet verified) `iss` names; with one issuer,
    /// that one (its own check then says what is wrong with the token).
    fn issuer_of(&self, token: &str) -> Option<&JwtCheck> {
        if let [only] = self.issuers.as_slice() {
            return Some(only);
        }
        let payload = token.split('.').nth(1)?;
        let claims: serde_json::Value = serde_json::from_slice(&crate::detect::decode::base64_bytes(payload)?).ok()?;
        let iss = claims.get("iss")?.as_str()?;
        self.issuers.iter().find(|j| j.jwks.issuer == iss)
    }

    /// The keys of the issuer a token names, which an unknown-`kid` refetch would refresh.
    pub fn jwks_for(&self, token: &str) -> Option<&Arc<jwks::Jwks>> {
        self.issuer_of(token).map(|j| &j.jwks)
    }

    /// Every trusted issuer's keys.
    pub fn all_jwks(&self) -> impl Iterator<Item = &Arc<jwks::Jwks>> {
        self.issuers.iter().map(|j| &j.jwks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forward::Signer;

    fn signer() -> Signer {
        Signer::from_pem(forward::tests::PEM, "https://idp.example".into(), Duration::from_secs(300)).unwrap()
    }

    fn check_for(s: &Signer) -> JwtCheck {
        JwtCheck {
            jwks: jwks::Jwks::with_keys("https://idp.example".into(), serde_json::from_value(s.jwks()).unwrap()),
            audience: vec!["gw".into()],
            algorithms: vec![Algorithm::EdDSA],
            skew_secs: 0,
            subject_claim: "sub".into(),
            groups_claim: "groups".into(),
            agent_type_claim: None,
            verified: Verified::default(),
        }
    }

    fn held(j: &JwtCheck) -> usize {
        j.verified.0.iter().map(|s| s.lock().len()).sum()
    }

    #[test]
    fn a_verified_token_is_taken_again_only_unaltered_unexpired_and_with_the_same_keys() {
        let s = signer();
        let j = check_for(&s);
        let who = Identity { subject: "alice".into(), groups: vec!["support".into()], agent_type: None, via: "jwt", claims: None };
        let token = s.sign(&who, None, "gw", SystemTime::now());
        assert_eq!(j.check(&token).unwrap().subject, "alice");
        assert_eq!(held(&j), 1);
        assert_eq!(j.check(&token).unwrap().groups, vec!["support".to_string()], "taken again");
        assert_eq!(held(&j), 1);
        // One byte of the signature changed: verified (and refused), never taken for the other.
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(j.check(std::str::from_utf8(&bad).unwrap()).is_err());
        // Another audience: the same signer's token for someone else is refused.
        assert!(matches!(j.check(&s.sign(&who, None, "other", SystemTime::now())), Err(AuthError::Invalid(_))));
        // The issuer's keys fetched again without this one (withdrawn): verified afresh, refused.
        j.jwks.replace(jsonwebtoken::jwk::JwkSet { keys: Vec::new() });
        assert!(matches!(j.check(&token), Err(AuthError::UnknownKey(_))));
        // A token held only until its own expiry: one expiring within a second or two is taken
        // now, and refused once that has passed (`exp` is whole seconds, compared as such).
        let j = check_for(&s);
        let soon = s.sign(&who, None, "gw", SystemTime::now() - Duration::from_secs(299));
        assert!(j.check(&soon).is_ok() && j.check(&soon).is_ok());
        std::thread::sleep(Duration::from_millis(2100));
        assert!(matches!(j.check(&soon), Err(AuthError::Invalid(m)) if m.contains("expired")));
    }
}
