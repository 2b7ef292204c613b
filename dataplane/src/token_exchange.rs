//! Upstream tokens by OAuth 2.0 Token Exchange (RFC 8693): the caller's own access token (the
//! bearer token the gateway authenticated it by) is exchanged at the identity provider for a
//! token to this upstream, naming the same subject — so the upstream sees who calls, with a
//! token scoped to it, and the agent's token never reaches it.
//!
//! Off the workers ([`crate::offload`]): two `sluice-exchange` threads per upstream ask the
//! provider; exchanged tokens are held per caller token (keyed by its blake3) until three
//! quarters of their lifetime, never past the caller's own token; the same caller's concurrent
//! requests share one exchange. A refusal is held for [`REFUSED_FOR`].

use crate::oauth::{fetch_for, renew_after, Grant, Live};
use crate::offload::{Answer, Cache, Failure, Lookup};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Exchanged tokens held per upstream (callers' tokens live, not callers).
const MAX_HELD: usize = 16_384;
/// Exchanges waiting for a thread.
const QUEUE: usize = 1_024;
const THREADS: usize = 2;
/// A token is not used within this much of the caller's own token's expiry.
const MARGIN: Duration = Duration::from_secs(5);
/// How long the provider's refusal to exchange a caller's token stands without asking again.
pub const REFUSED_FOR: Duration = Duration::from_secs(30);

pub struct Exchanger {
    pub grant: Grant,
    upstream: String,
    cache: Arc<Cache<Arc<Live>>>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exchanger({:?})", self.grant)
    }
}

impl Exchanger {
    /// An exchanger that asks nothing until [`Exchanger::run`]. `upstream` names the upstream
    /// in logs.
    pub fn new(upstream: String, grant: Grant) -> Arc<Self> {
        Arc::new(Exchanger { grant, upstream, cache: Cache::new(QUEUE, MAX_HELD) })
    }

    /// The token for the caller presenting `subject` (its access token, expiring at
    /// `expires`): held, being exchanged, or now asked for.
    pub fn lookup(&self, subject: &str, expires: Option<SystemTime>) -> Lookup<Arc<Live>> {
        self.cache.lookup(subject, expires)
    }

    /// The token held for `subject`, without asking for one.
    pub fn held(&self, subject: &str) -> Option<Arc<Live>> {
        self.cache.held(subject)
    }

    /// The upstream refused the token held for `subject`: the next request exchanges again.
    pub fn forget(&self, subject: &str) {
        self.cache.forget(subject);
    }

    /// Tokens held now (for `/metrics`).
    pub fn held_count(&self) -> usize {
        self.cache.held_count()
    }

    /// Exchanges that gave a token, and that did not.
    pub fn counts(&self) -> (u64, u64) {
        (self.cache.ok.load(Ordering::Relaxed), self.cache.failed.load(Ordering::Relaxed))
    }

    /// Start the exchange threads (once; later calls do nothing). They end when the
    /// exchanger is dropped (a reload replaced it).
    pub fn run(&self) {
        let (grant, upstream) = (self.grant.clone(), self.upstream.clone());
        let agent = crate::oauth::agent(&grant.outbound);
        self.cache.run("sluice-exchange", THREADS, Arc::new(move |subject, expires| exchange(&agent, &grant, &upstream, subject, expires)));
    }
}

/// One exchange: the token and until when it is used, or why there is none (not held).
fn exchange(agent: &ureq::Agent, grant: &Grant, upstream: &str, subject: &str, expires: Option<SystemTime>) -> Answer<Arc<Live>> {
    let form = [("grant_type", GRANT_TYPE), ("subject_token", subject), ("subject_token_type", ACCESS_TOKEN), ("requested_token_type", ACCESS_TOKEN)];
    let asked = Instant::now();
    match fetch_for(agent, grant, &form) {
        Ok(issued) => {
            tracing::debug!(upstream = %upstream, expires_in = issued.lifetime.map(|l| l.as_secs()), "caller's token exchanged for the upstream's");
            (Ok(Arc::new(live(&issued.token, &grant.secret))), Some(until(asked, issued.lifetime, expires, SystemTime::now())))
        }
        Err((refused, reason)) => {
            tracing::warn!(upstream = %upstream, error = %reason, "token exchange failed");
            // A refusal stands for a while (a caller retrying must not make the provider answer
            // each time); a failure to ask does not.
            (Err(Failure { refused, reason }), refused.then(|| Instant::now() + REFUSED_FOR))
        }
    }
}

/// What requests send and scrub for an exchanged token.
fn live(token: &str, client_secret: &str) -> Live {
    let value = format!("Bearer {token}");
    let mut secrets = vec![value.clone(), token.to_owned()];
    if client_secret.len() >= 8 {
        secrets.push(client_secret.to_owned());
    }
    Live { value: Some(value.into_bytes()), secrets, error: None }
}

/// Until when a token asked for at `asked` is used: three quarters of its lifetime, and never
/// within [`MARGIN`] of the caller's own token's expiry (`now` is the wall clock then).
fn until(asked: Instant, lifetime: Option<Duration>, caller_expires: Option<SystemTime>, now: SystemTime) -> Instant {
    let own = asked + renew_after(lifetime);
    match caller_expires.map(|e| e.duration_since(now).unwrap_or_default().saturating_sub(MARGIN)) {
        Some(left) => own.min(Instant::now() + left),
        None => own,
    }
}

/// The caller's token's expiry from its `exp` claim.
pub fn expiry(claims: Option<&serde_json::Value>) -> Option<SystemTime> {
    claims?.get("exp")?.as_u64().map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::ClientAuth;
    use parking_lot::Mutex;
    use std::io::{BufReader, Write};

    fn grant(url: String) -> Grant {
        Grant {
            token_url: url,
            client_id: "sluice-gateway".into(),
            secret: "sluice-gateway-secret".into(),
            auth: ClientAuth::Basic,
            scope: None,
            resource: None,
            audience: Some("https://tickets.internal".into()),
            outbound: Default::default(),
        }
    }

    /// A token endpoint on a real socket: answers each request with `answer(form)` and
    /// records the forms it was sent.
    fn endpoint(answer: fn(&str) -> (u16, String)) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let form = crate::test_http::request_body(&mut BufReader::new(conn.try_clone().unwrap()));
                // Slow enough that concurrent lookups find the exchange under way.
                std::thread::sleep(Duration::from_millis(100));
                let (status, text) = answer(&form);
                log.lock().push(form);
                write!(conn, "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len()).unwrap();
            }
        });
        (url, seen)
    }

    fn settle(x: &Exchanger, subject: &str) -> Result<Arc<Live>, Failure> {
        let slot = match x.lookup(subject, None) {
            Lookup::Ready(l) => return Ok(l),
            Lookup::Failed(f) => return Err(f),
            Lookup::Wait(slot) => slot,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Some(o) = slot.outcome() {
                return o;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no outcome in 10 s");
    }

    #[test]
    fn each_callers_token_is_exchanged_once_and_held_apart() {
        let (url, seen) = endpoint(|form| {
            let subject = form.split('&').find_map(|kv| kv.strip_prefix("subject_token=")).unwrap_or("");
            (200, format!(r#"{{"access_token":"up-{subject}","issued_token_type":"{ACCESS_TOKEN}","token_type":"Bearer","expires_in":600}}"#))
        });
        let x = Exchanger::new("tickets".into(), grant(url));
        x.run();
        // Concurrent requests of one caller share one exchange.
        let waits: Vec<_> = (0..3).map(|_| x.lookup("alice-token", None)).collect();
        assert!(waits.iter().all(|w| matches!(w, Lookup::Wait(_))));
        let a = settle(&x, "alice-token").unwrap();
        assert_eq!(a.value.as_deref(), Some(&b"Bearer up-alice-token"[..]));
        assert!(a.secrets.contains(&"up-alice-token".to_string()) && a.secrets.contains(&"sluice-gateway-secret".to_string()));
        let b = settle(&x, "bob-token").unwrap();
        assert_eq!(b.value.as_deref(), Some(&b"Bearer up-bob-token"[..]));
        assert!(matches!(x.lookup("alice-token", None), Lookup::Ready(l) if Arc::ptr_eq(&l, &a)), "held, not asked again");
        let forms = seen.lock().clone();
        assert_eq!(forms.len(), 2, "{forms:?}");
        assert!(forms[0].starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=alice-token&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&requested_token_type="), "{forms:?}");
        assert!(forms[0].ends_with("&audience=https%3A%2F%2Ftickets.internal"), "{forms:?}");
        // Refused by the upstream: asked again.
        x.forget("alice-token");
        assert!(x.held("alice-token").is_none());
        settle(&x, "alice-token").unwrap();
        assert_eq!(seen.lock().len(), 3);
        assert_eq!(x.counts(), (3, 0));
    }

    #[test]
    fn a_refusal_is_told_apart_from_an_unreachable_provider_and_nothing_is_held() {
        let (url, _) = endpoint(|_| (400, r#"{"error":"invalid_grant","error_description":"interns may not reach this resource"}"#.into()));
        let x = Exchanger::new("tickets".into(), grant(url));
        x.run();
        let f = settle(&x, "intern-token").unwrap_err();
        assert!(f.refused && f.reason.contains("invalid_grant (interns may not reach this resource)"), "{f:?}");
        assert!(x.held("intern-token").is_none());
        assert!(matches!(x.lookup("intern-token", None), Lookup::Failed(g) if g == f), "the refusal stands without asking again");
        assert_eq!(x.counts(), (0, 1));
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let x = Exchanger::new("tickets".into(), grant(format!("http://{dead}/token")));
        x.run();
        let f = settle(&x, "alice-token").unwrap_err();
        assert!(!f.refused && f.reason.contains(&dead.to_string()), "{f:?}");
        assert!(matches!(x.lookup("alice-token", None), Lookup::Wait(_)), "a failure to ask is asked again");
        // Not running: said so, at once.
        let idle = Exchanger::new("tickets".into(), grant("http://127.0.0.1:9/token".into()));
        idle.cache.close();
        assert!(matches!(idle.lookup("t", None), Lookup::Failed(f) if f.reason.contains("not running")));
    }

    #[test]
    fn a_token_is_not_used_past_three_quarters_of_its_life_or_near_the_callers_own_expiry() {
        let (now, asked) = (SystemTime::now(), Instant::now());
        let life = Some(Duration::from_secs(600));
        let near = |a: Instant, b: Instant| a.max(b) - a.min(b) < Duration::from_secs(1);
        assert!(near(until(asked, life, None, now), asked + Duration::from_secs(450)));
        assert!(near(until(asked, life, Some(now + Duration::from_secs(3600)), now), asked + Duration::from_secs(450)));
        assert!(near(until(asked, life, Some(now + Duration::from_secs(65)), now), Instant::now() + Duration::from_secs(60)));
        assert!(until(asked, life, Some(now - Duration::from_secs(1)), now) <= Instant::now(), "an expired caller token holds nothing");
        assert_eq!(expiry(Some(&serde_json::json!({"exp": 1800000000u64}))), Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        assert_eq!(expiry(Some(&serde_json::json!({"sub": "x"}))), None);
    }
}
