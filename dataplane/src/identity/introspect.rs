//! Opaque access tokens, read by token introspection (RFC 7662): a bearer token that is not a
//! JWT (and no API key) is sent to the issuer's introspection endpoint, as the gateway's
//! client; the issuer says whether it is active and whom it names. The answer is checked as a
//! JWT's claims are — issuer, audience, expiry — and held per token (by its blake3) for at
//! most `cache`, never past the token's `exp`; a refusal is held for [`REFUSED_FOR`], so a
//! caller repeating a bad token does not make the issuer answer each time. Off the workers
//! ([`crate::offload`]): two `sluice-introspect` threads ask.

use super::{claim, strings, Identity};
use crate::oauth::Grant;
use crate::offload::{Answer, Cache, Failure, Lookup};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tokens held (active ones and refused ones).
const MAX_HELD: usize = 65_536;
const QUEUE: usize = 1_024;
const THREADS: usize = 2;
/// How long a refused token stays refused without asking again.
pub const REFUSED_FOR: Duration = Duration::from_secs(30);

/// How an answer is read into an identity.
#[derive(Debug, Clone)]
pub struct Reading {
    pub issuer: String,
    pub audience: Vec<String>,
    pub skew: Duration,
    pub subject_claim: String,
    pub groups_claim: String,
    pub agent_type_claim: Option<String>,
    /// The longest an active answer is trusted.
    pub cache: Duration,
}

pub struct Introspector {
    /// The endpoint (`token_url`) and the gateway's client.
    pub grant: Grant,
    pub reading: Reading,
    cache: Arc<Cache<Identity>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Introspector({:?}, {:?})", self.grant, self.reading)
    }
}

impl Introspector {
    pub fn new(grant: Grant, reading: Reading) -> Arc<Self> {
        Arc::new(Introspector { grant, reading, cache: Cache::new(QUEUE, MAX_HELD) })
    }

    pub fn lookup(&self, token: &str) -> Lookup<Identity> {
        self.cache.lookup(token, None)
    }

    /// Tokens read as active, and refused or unanswered.
    pub fn counts(&self) -> (u64, u64) {
        (self.cache.ok.load(Ordering::Relaxed), self.cache.failed.load(Ordering::Relaxed))
    }

    /// Start asking (once; later calls do nothing).
    pub fn run(&self) {
        let (grant, reading) = (self.grant.clone(), self.reading.clone());
        let agent = crate::oauth::agent(&grant.outbound);
        self.cache.run("sluice-introspect", THREADS, Arc::new(move |token, _| ask(&agent, &grant, &reading, token)));
    }
}

/// How long a request waits for the issuer to introspect its token.
pub const WAIT: Duration = Duration::from_secs(5);

/// A lookup's end as the caller's authentication: the identity, a refusal (401), or the
/// issuer unavailable (503); `None`: no answer within [`WAIT`]. A `Wait` is not an end.
pub fn outcome(l: Option<Lookup<Identity>>) -> Result<Identity, super::AuthError> {
    use super::AuthError;
    match l {
        Some(Lookup::Ready(id)) => Ok(id),
        Some(Lookup::Failed(f)) if f.refused => Err(AuthError::Refused(f.reason)),
        Some(Lookup::Failed(f)) => Err(AuthError::IssuerUnavailable(f.reason)),
        Some(Lookup::Wait(_)) | None => Err(AuthError::IssuerUnavailable(format!("no answer within {WAIT:?}"))),
    }
}

fn ask(agent: &ureq::Agent, grant: &Grant, reading: &Reading, token: &str) -> Answer<Identity> {
    let unavailable = |reason: String| (Err(Failure { refused: false, reason }), None);
    let (status, body) = match crate::oauth::post_form(agent, grant, &[("token", token), ("token_type_hint", "access_token")]) {
        Ok(answer) => answer,
        Err(e) => return unavailable(e),
    };
    if status != 200 {
        return unavailable(format!("POST {}: answered {status}{}", grant.token_url, if status == 401 { " (check identity.introspection client_id and its secret)" } else { "" }));
    }
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(&body) else {
        return unavailable(format!("POST {}: the answer is not JSON", grant.token_url));
    };
    let now = SystemTime::now();
    match read(&answer, reading, now) {
        Ok((identity, exp)) => {
            let left = exp.map_or(reading.cache, |e| e.duration_since(now).unwrap_or_default().min(reading.cache));
            (Ok(identity), Some(Instant::now() + left))
        }
        Err(reason) => {
            tracing::info!(reason = %reason, "an opaque token was refused by introspection");
            (Err(Failure { refused: true, reason }), Some(Instant::now() + REFUSED_FOR))
        }
    }
}

/// An introspection answer as an identity (and the token's expiry), or why it names none.
pub fn read(a: &serde_json::Value, r: &Reading, now: SystemTime) -> Result<(Identity, Option<SystemTime>), String> {
    if a.get("active") != Some(&serde_json::Value::Bool(true)) {
        return Err("is not active (expired, revoked, or not one the issuer issued)".into());
    }
    let secs = |k: &str| a.get(k).and_then(serde_json::Value::as_u64).map(|s| UNIX_EPOCH + Duration::from_secs(s));
    let exp = secs("exp");
    if exp.is_some_and(|e| e + r.skew <= now) {
        return Err("has expired".into());
    }
    if secs("nbf").is_some_and(|n| n > now + r.skew) {
        return Err("is not valid yet (nbf)".into());
    }
    // RFC 7662 makes these optional; when the issuer says them they must be right, and the
    // audience must be said: a token for another service is not one for this gateway.
    if a.get("iss").is_some_and(|i| i.as_str() != Some(r.issuer.as_str())) {
        return Err("comes from an issuer this gateway does not trust (iss)".into());
    }
    let aud = strings(a.get("aud"));
    if !aud.iter().any(|x| r.audience.contains(x)) {
        return Err("is not meant for this gateway (aud)".into());
    }
    // A client-credentials token has no resource owner: the client is the caller.
    let subject = claim(a, &r.subject_claim).or_else(|| (r.subject_claim == "sub").then(|| a.get("client_id")).flatten()).and_then(|s| s.as_str()).filter(|s| !s.is_empty());
    let Some(subject) = subject else { return Err(format!("names no caller (no `{}`)", r.subject_claim)) };
    Ok((
        Identity {
            subject: subject.to_owned(),
            groups: strings(claim(a, &r.groups_claim)),
            agent_type: r.agent_type_claim.as_deref().and_then(|p| claim(a, p)).and_then(|s| s.as_str()).map(str::to_owned),
            via: "introspection",
            claims: Some(Arc::new(a.clone())),
        },
        exp,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reading() -> Reading {
        Reading {
            issuer: "https://idp.example".into(),
            audience: vec!["https://gw.example/mcp".into()],
            skew: Duration::from_secs(30),
            subject_claim: "sub".into(),
            groups_claim: "groups".into(),
            agent_type_claim: Some("agent_type".into()),
            cache: Duration::from_secs(60),
        }
    }

    #[test]
    fn an_answer_names_the_caller_only_when_active_in_time_from_our_issuer_and_for_us() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let good = json!({"active": true, "iss": "https://idp.example", "aud": ["other", "https://gw.example/mcp"], "client_id": "support-agent",
                          "exp": 1_800_000_600u64, "groups": ["support"], "agent_type": "assistant", "scope": "mcp"});
        let (id, exp) = read(&good, &reading(), now).unwrap();
        assert_eq!((id.subject.as_str(), id.groups.clone(), id.agent_type.as_deref(), id.via), ("support-agent", vec!["support".to_string()], Some("assistant"), "introspection"));
        assert_eq!(exp, Some(UNIX_EPOCH + Duration::from_secs(1_800_000_600)));
        assert!(id.bearer(), "an introspected token can be exchanged");
        let mut with_sub = good.clone();
        with_sub["sub"] = json!("alice");
        assert_eq!(read(&with_sub, &reading(), now).unwrap().0.subject, "alice", "sub first, the client only without one");
        let bad = |patch: serde_json::Value| {
            let mut a = good.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    a.as_object_mut().unwrap().remove(k);
                } else {
                    a[k] = v.clone();
                }
            }
            read(&a, &reading(), now).unwrap_err()
        };
        assert!(bad(json!({"active": false})).contains("not active"));
        assert!(bad(json!({"active": "true"})).contains("not active"), "only the boolean");
        assert!(bad(json!({"active": null})).contains("not active"));
        assert!(bad(json!({"exp": 1_799_999_900u64})).contains("expired"));
        assert!(bad(json!({"nbf": 1_800_000_100u64})).contains("nbf"));
        assert!(bad(json!({"iss": "https://evil.example"})).contains("iss"));
        assert!(bad(json!({"aud": "https://other.example"})).contains("aud"));
        assert!(bad(json!({"aud": null})).contains("aud"), "an answer that does not say the audience is not for us");
        assert!(bad(json!({"client_id": null})).contains("names no caller"));
        // Within the clock skew an expired token still reads; no `exp`: held for `cache` only.
        let mut late = good.clone();
        late["exp"] = json!(1_799_999_990u64);
        assert!(read(&late, &reading(), now).is_ok());
        late.as_object_mut().unwrap().remove("exp");
        assert_eq!(read(&late, &reading(), now).unwrap().1, None);
    }
}
