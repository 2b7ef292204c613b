//! Upstream access tokens by the OAuth 2.0 client-credentials grant (RFC 6749 §4.4), for an
//! upstream whose `credential.kind` is `oauth_client_credentials`. One thread per such
//! credential asks the token endpoint off the request path and swaps the token in whole
//! ([`Live`]); requests read it with one atomic load. The token is renewed when three quarters
//! of its lifetime have passed, sooner when the upstream refuses it (rate-limited), and kept
//! while the endpoint fails until it expires — then calls to the upstream are answered 503
//! with the endpoint's last error until a token arrives. Never logged: the secret, the token.

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token endpoint that names no lifetime: the token is renewed this often.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(300);
/// Renewals asked for by refusals (an upstream answering 401) at most this often.
const MIN_ON_DEMAND: Duration = Duration::from_secs(2);
/// Largest wait between retries while the endpoint fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2).
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
    /// A short-lived JWT the gateway signs with its own key (`private_key_jwt`): no secret is
    /// shared with the provider, which holds only the public key. `audience`: the assertion's
    /// `aud` (the provider's issuer identifier or its token endpoint).
    PrivateKeyJwt { signer: Arc<crate::identity::forward::Signer>, audience: String },
}

impl PartialEq for ClientAuth {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ClientAuth::Basic, ClientAuth::Basic) | (ClientAuth::Post, ClientAuth::Post) => true,
            (ClientAuth::PrivateKeyJwt { signer: a, audience: x }, ClientAuth::PrivateKeyJwt { signer: b, audience: y }) => a.kid == b.kid && x == y,
            _ => false,
        }
    }
}

impl Eq for ClientAuth {}

/// RFC 7523's client assertion type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What the gateway asks the token endpoint for.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    pub token_url: String,
    pub client_id: String,
    pub secret: String,
    pub auth: ClientAuth,
    pub scope: Option<String>,
    /// RFC 8707 resource indicator.
    pub resource: Option<String>,
    /// The `audience` parameter some providers (Auth0, Okta) want instead.
    pub audience: Option<String>,
    /// Roots the token endpoint's certificate is checked against.
    pub outbound: crate::tls::Outbound,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grant {{ token_url: {:?}, client_id: {:?}, secret: ***, auth: {:?}, scope: {:?}, resource: {:?}, audience: {:?} }}", self.token_url, self.client_id, self.auth, self.scope, self.resource, self.audience)
    }
}

/// What requests read: the header value to send (none while no unexpired token is held) and
/// every secret to scrub from the upstream's answers — the client secret, the current token
/// and the one before it (an answer in flight during a renewal may echo it).
pub struct Live {
    pub value: Option<Vec<u8>>,
    pub secrets: Vec<String>,
    /// Why there is no token (the endpoint's last error), for the agent's 503.
    pub error: Option<String>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Live {{ value: {}, error: {:?} }}", if self.value.is_some() { "***" } else { "none" }, self.error)
    }
}

/// A token as the endpoint issued it.
#[derive(Debug, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    /// The lifetime the endpoint stated (`expires_in`), if any.
    pub lifetime: Option<Duration>,
}

pub struct Source {
    pub grant: Grant,
    upstream: String,
    live: ArcSwap<Live>,
    refresh: parking_lot::Mutex<Sender<()>>,
    /// The refresh requests' receiving end until [`Source::run`] hands it to the thread.
    waiting: parking_lot::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    pub fetched: AtomicU64,
    pub failed: AtomicU64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({:?}, token held: {})", self.grant, self.live.load().value.is_some())
    }
}

/// `application/x-www-form-urlencoded` for one value (also how RFC 6749 §2.3.1 wants the id
/// and secret inside `Basic`).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The form body and the `Authorization` header (if any) of a client-credentials request.
pub fn request(g: &Grant) -> (String, Option<String>) {
    request_for(g, &[("grant_type", "client_credentials")])
}

/// The form body and the `Authorization` header (if any) of a token request: `grant` (the
/// grant type and its own parameters), what to ask for, and the client's authentication.
pub fn request_for(g: &Grant, grant: &[(&str, &str)]) -> (String, Option<String>) {
    let mut form = grant.to_vec();
    for (k, v) in [("scope", &g.scope), ("resource", &g.resource), ("audience", &g.audience)] {
        if let Some(v) = v {
            form.push((k, v.as_str()));
        }
    }
    let assertion;
    let auth = match &g.auth {
        ClientAuth::Basic => Some(format!("Basic {}", crate::config::credential::base64(format!("{}:{}", form_encode(&g.client_id), form_encode(&g.secret)).as_bytes()))),
        ClientAuth::Post => {
            form.push(("client_id", &g.client_id));
            form.push(("client_secret", &g.secret));
            None
        }
        ClientAuth::PrivateKeyJwt { signer, audience } => {
            assertion = signer.client_assertion(&g.client_id, audience, std::time::SystemTime::now());
            form.push(("client_id", &g.client_id));
            form.push(("client_assertion_type", JWT_BEARER));
            form.push(("client_assertion", &assertion));
            None
        }
    };
    let body = form.iter().map(|(k, v)| format!("{k}={}", form_encode(v))).collect::<Vec<_>>().join("&");
    (body, auth)
}

/// Read the token endpoint's answer (RFC 6749 §5.1, §5.2). The reason of an error names what
/// the endpoint said, never the secret or a token.
pub fn parse_answer(status: u16, body: &str) -> Result<Issued, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|_| format!("the token endpoint answered {status} with a body that is not JSON"))?;
    if status != 200 {
        let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("no error code");
        let desc = v.get("error_description").and_then(|e| e.as_str()).map(|d| format!(" ({})", d.chars().take(200).collect::<String>())).unwrap_or_default();
        let hint = match error {
            "invalid_client" => ": check client_id and the client secret (or, with private_key_jwt, that the provider holds the gateway's public key: sluice jwks)",
            "invalid_scope" => ": check scope",
            "invalid_target" => ": check resource",
            "unauthorized_client" => ": the client may not use this grant (client credentials, or token exchange) at this provider",
            "invalid_grant" => ": the provider would not issue a token for what was presented",
            _ => "",
        };
        return Err(format!("the token endpoint answered {status}: {error}{desc}{hint}"));
    }
    let token = v.get("access_token").and_then(|t| t.as_str()).ok_or("the token endpoint's answer has no access_token")?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token endpoint's access_token is empty or holds characters a header cannot carry".into());
    }
    match v.get("token_type") {
        None => {}
        Some(t) if t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")) => {}
        Some(t) => return Err(format!("the token endpoint issued a {t} token; the gateway sends bearer tokens only")),
    }
    let lifetime = match v.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        // Some providers send the number as a string.
        Some(e) => match e.as_u64().or_else(|| e.as_str().and_then(|s| s.parse().ok())) {
            Some(s) if s > 0 => Some(Duration::from_secs(s)),
            _ => return Err(format!("the token endpoint's expires_in is {e}, not a positive number of seconds")),
        },
    };
    Ok(Issued { token: token.to_owned(), lifetime })
}

/// When to renew a token of this lifetime: after three quarters of it, at least a second on.
pub fn renew_after(lifetime: Option<Duration>) -> Duration {
    (lifetime.unwrap_or(UNSTATED_LIFETIME) * 3 / 4).max(Duration::from_secs(1))
}

fn fetch(agent: &ureq::Agent, g: &Grant) -> Result<Issued, String> {
    fetch_for(agent, g, &[("grant_type", "client_credentials")]).map_err(|(_, e)| e)
}

/// Ask the token endpoint for a token by `grant`; an error says whether the endpoint answered
/// (and refused: `true`) or could not be asked.
pub fn fetch_for(agent: &ureq::Agent, g: &Grant, grant: &[(&str, &str)]) -> Result<Issued, (bool, String)> {
    let (status, text) = post_form(agent, g, grant).map_err(|e| (false, e))?;
    // A 4xx is the endpoint's judgement of the request; anything else a failure to ask.
    parse_answer(status, &text).map_err(|e| ((400..500).contains(&status), format!("POST {}: {e}", g.token_url)))
}

/// POST `form` (and what `g` asks for) to `g.token_url` as `g`'s client; the status and the
/// body (at most 64 KiB), or why there is none.
pub fn post_form(agent: &ureq::Agent, g: &Grant, form: &[(&str, &str)]) -> Result<(u16, String), String> {
    let (body, auth) = request_for(g, form);
    let mut req = agent.post(&g.token_url).header("accept", "application/json").content_type("application/x-www-form-urlencoded");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let mut resp = req.send(body).map_err(|e| format!("POST {}: {e}", g.token_url))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().with_config().limit(64 * 1024).read_to_string().map_err(|e| format!("POST {}: reading the answer: {e}", g.token_url))?;
    Ok((status, text))
}

/// An agent for token requests: the deployment's roots, no redirects, bounded in time.
pub fn agent(outbound: &crate::tls::Outbound) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(FETCH_TIMEOUT)).http_status_as_error(false).max_redirects(0).tls_config(outbound.tls()).build().into()
}

impl Source {
    /// A token source that asks nothing until [`Source::run`] (a config that is only checked,
    /// or a reload that is rejected, never calls the token endpoint). `upstream` names the
    /// upstream in logs.
    pub fn new(upstream: String, grant: Grant) -> Arc<Self> {
        let (tx, rx) = channel::<()>();
        let secrets = vec![grant.secret.clone()].into_iter().filter(|s| s.len() >= 8).collect();
        Arc::new(Source {
            grant,
            upstream,
            live: ArcSwap::from_pointee(Live { value: None, secrets, error: Some("the first token has not arrived yet".into()) }),
            refresh: parking_lot::Mutex::new(tx),
            waiting: parking_lot::Mutex::new(Some(rx)),
            fetched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Start asking for tokens in the background (once; later calls do nothing).
    pub fn run(self: &Arc<Self>) {
        let Some(rx) = self.waiting.lock().take() else { return };
        let (upstream, grant) = (self.upstream.clone(), self.grant.clone());
        let weak: Weak<Source> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("sluice-oauth".into()).spawn(move || {
            let agent = agent(&grant.outbound);
            let mut failures = 0u32;
            // Whether a token is held, and until when (a token of unstated lifetime is kept
            // until the upstream refuses it).
            let mut held = false;
            let mut expires: Option<Instant> = None;
            loop {
                let Some(s) = weak.upgrade() else { return };
                let wait = match fetch(&agent, &grant) {
                    Ok(issued) => {
                        failures = 0;
                        let now = Instant::now();
                        held = true;
                        expires = issued.lifetime.map(|l| now + l);
                        s.fetched.fetch_add(1, Ordering::Relaxed);
                        s.store_token(&issued.token);
                        tracing::info!(upstream = %upstream, token_url = %grant.token_url, expires_in = issued.lifetime.map(|l| l.as_secs()), "upstream token obtained");
                        renew_after(issued.lifetime)
                    }
                    Err(e) => {
                        failures += 1;
                        s.failed.fetch_add(1, Ordering::Relaxed);
                        let expired = !held || expires.is_some_and(|x| Instant::now() >= x);
                        held &= !expired;
                        s.store_error(&e, expired);
                        let backoff = Duration::from_secs(1 << failures.min(5)).min(MAX_BACKOFF);
                        let then = if expired { "calls to it are answered 503 until one arrives" } else { "the current token is used until it expires" };
                        tracing::error!(upstream = %upstream, error = %e, "cannot obtain an upstream token; {then}");
                        // Retry within the backoff, and in time to drop the token when it expires.
                        expires.filter(|_| held).map_or(backoff, |x| backoff.min(x.saturating_duration_since(Instant::now()).max(Duration::from_millis(100))))
                    }
                };
                drop(s);
                let asked = Instant::now();
                match rx.recv_timeout(wait) {
                    Ok(()) => {
                        while rx.try_recv().is_ok() {}
                        // However many refusals arrive, one renewal per MIN_ON_DEMAND.
                        let since = asked.elapsed();
                        if since < MIN_ON_DEMAND && failures == 0 {
                            std::thread::sleep(MIN_ON_DEMAND - since);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the upstream token thread");
        }
    }

    fn store_token(&self, token: &str) {
        let value = format!("Bearer {token}");
        let old = self.live.load();
        let mut secrets: Vec<String> = vec![value.clone(), token.to_owned()];
        if self.grant.secret.len() >= 8 {
            secrets.push(self.grant.secret.clone());
        }
        // The previous token, for answers still in flight.
        secrets.extend(old.value.as_deref().and_then(|v| std::str::from_utf8(v).ok()).filter(|v| *v != value).map(|v| [v.to_owned(), v.trim_start_matches("Bearer ").to_owned()]).into_iter().flatten());
        self.live.store(Arc::new(Live { value: Some(value.into_bytes()), secrets, error: None }));
    }

    fn store_error(&self, e: &str, expired: bool) {
        let old = self.live.load_full();
        let value = if expired { None } else { old.value.clone() };
        self.live.store(Arc::new(Live { value, secrets: old.secrets.clone(), error: Some(e.to_owned()) }));
    }

    /// The token and secrets now (one atomic load and a reference count).
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The upstream refused the token: renew it (rate-limited by the thread).
    pub fn request_refresh(&self) {
        let _ = self.refresh.lock().send(());
    }

    /// A reload with the same grant starts with the token already held.
    pub fn adopt(&self, other: &Source) {
        if other.grant == self.grant && self.live.load().value.is_none() && other.live.load().value.is_some() {
            self.live.store(other.live());
        }
        self.fetched.fetch_add(other.fetched.load(Ordering::Relaxed), Ordering::Relaxed);
        self.failed.fetch_add(other.failed.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Wait (blocking; start-up only) until a token or an error is in, or `limit`.
    pub fn wait_first(&self, limit: Duration) -> bool {
        let t = Instant::now();
        while self.fetched.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) == 0 && t.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.live.load().value.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(auth: ClientAuth) -> Grant {
        Grant {
            token_url: "https://idp.example/token".into(),
            client_id: "gw:one".into(),
            secret: "s3cret&=+ x".into(),
            auth,
            scope: Some("mcp tools".into()),
            resource: Some("https://api.example/mcp".into()),
            audience: None,
            outbound: Default::default(),
        }
    }

    #[test]
    fn the_request_encodes_the_grant_and_the_client_as_configured() {
        let (body, auth) = request(&grant(ClientAuth::Basic));
        assert_eq!(body, "grant_type=client_credentials&scope=mcp+tools&resource=https%3A%2F%2Fapi.example%2Fmcp");
        // RFC 6749 §2.3.1: id and secret form-encoded, then joined by ':' and base64'd.
        let want = crate::config::credential::base64(b"gw%3Aone:s3cret%26%3D%2B+x");
        assert_eq!(auth.as_deref(), Some(format!("Basic {want}").as_str()));
        let (body, auth) = request(&grant(ClientAuth::Post));
        assert!(auth.is_none());
        assert!(body.ends_with("&client_id=gw%3Aone&client_secret=s3cret%26%3D%2B+x"), "{body}");
        assert!(!format!("{:?}", grant(ClientAuth::Post)).contains("s3cret"), "Debug hides the secret");
    }

    #[test]
    fn private_key_jwt_sends_a_signed_assertion_and_no_secret() {
        const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let signer = Arc::new(crate::identity::forward::Signer::from_pem(PEM, String::new(), Duration::from_secs(60)).unwrap());
        let g = Grant { secret: String::new(), ..grant(ClientAuth::PrivateKeyJwt { signer: signer.clone(), audience: "https://idp.example/token".into() }) };
        let (body, auth) = request(&g);
        assert!(auth.is_none() && !body.contains("client_secret"), "{body}");
        let field = |name: &str| body.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(str::to_owned);
        assert_eq!(field("client_id").as_deref(), Some("gw%3Aone"));
        assert_eq!(field("client_assertion_type").as_deref(), Some("urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"));
        let assertion = field("client_assertion").unwrap();
        let parts: Vec<&str> = assertion.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWS, its base64url characters needing no escape");
        let claims: serde_json::Value = serde_json::from_slice(&crate::identity::forward::tests::decode(parts[1])).unwrap();
        assert_eq!((claims["iss"].as_str(), claims["sub"].as_str(), claims["aud"].as_str()), (Some("gw:one"), Some("gw:one"), Some("https://idp.example/token")));
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
        let (again, _) = request(&g);
        assert_ne!(again, body, "a fresh assertion (jti) per request");
    }

    #[test]
    fn answers_are_read_strictly_and_errors_say_what_the_endpoint_said() {
        let ok = parse_answer(200, r#"{"access_token":"eyJ.a-b_c~d+/=","token_type":"Bearer","expires_in":600}"#).unwrap();
        assert_eq!(ok, Issued { token: "eyJ.a-b_c~d+/=".into(), lifetime: Some(Duration::from_secs(600)) });
        assert_eq!(parse_answer(200, r#"{"access_token":"t","token_type":"bearer","expires_in":"60"}"#).unwrap().lifetime, Some(Duration::from_secs(60)), "a lifetime sent as a string");
        assert_eq!(parse_answer(200, r#"{"access_token":"t"}"#).unwrap().lifetime, None);
        for (body, want) in [
            (r#"{"access_token":"t","token_type":"DPoP"}"#, "bearer tokens only"),
            (r#"{"access_token":"a b"}"#, "characters a header cannot carry"),
            (r#"{"access_token":"a\r\nX-Evil: 1"}"#, "characters a header cannot carry"),
            (r#"{"access_token":""}"#, "empty"),
            (r#"{"token_type":"Bearer"}"#, "no access_token"),
            (r#"{"access_token":"t","expires_in":0}"#, "not a positive number"),
            (r#"{"access_token":"t","expires_in":-5}"#, "not a positive number"),
            ("<html>", "not JSON"),
        ] {
            let e = parse_answer(200, body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let e = parse_answer(401, r#"{"error":"invalid_client","error_description":"client authentication failed"}"#).unwrap_err();
        assert!(e.starts_with("the token endpoint answered 401: invalid_client (client authentication failed): check client_id and the client secret"), "{e}");
        assert!(parse_answer(500, "oops").unwrap_err().contains("answered 500 with a body that is not JSON"));
    }

    #[test]
    fn tokens_are_renewed_after_three_quarters_of_their_lifetime() {
        assert_eq!(renew_after(Some(Duration::from_secs(600))), Duration::from_secs(450));
        assert_eq!(renew_after(Some(Duration::from_secs(1))), Duration::from_secs(1), "never sooner than a second");
        assert_eq!(renew_after(None), Duration::from_secs(225));
    }

    #[test]
    fn a_renewed_token_keeps_the_one_before_in_the_scrub_list_and_an_expired_one_is_dropped() {
        let s = Source::new("up".into(), grant(ClientAuth::Basic));
        s.store_token("first-token-123");
        s.store_token("second-token-456");
        let live = s.live();
        assert_eq!(live.value.as_deref(), Some(&b"Bearer second-token-456"[..]));
        for want in ["second-token-456", "Bearer second-token-456", "first-token-123", "Bearer first-token-123", "s3cret&=+ x"] {
            assert!(live.secrets.iter().any(|x| x == want), "{want} in {:?}", live.secrets.len());
        }
        s.store_error("the token endpoint answered 503", false);
        assert!(s.live().value.is_some(), "a failed renewal keeps the unexpired token");
        s.store_error("the token endpoint answered 503", true);
        let live = s.live();
        assert!(live.value.is_none() && live.error.as_deref() == Some("the token endpoint answered 503"));
        assert!(live.secrets.iter().any(|x| x == "second-token-456"), "still scrubbed");
    }
}
