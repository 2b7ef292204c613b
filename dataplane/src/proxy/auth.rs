//! The identify phase on the wire: authenticate a request (waiting on this core's timer,
//! never blocking it, while an unknown signing key is refetched), answer 401 with a
//! `WWW-Authenticate` challenge that points MCP clients at this resource's metadata, and
//! serve that metadata (RFC 9728, as the MCP authorization spec asks).

use super::cors::Reader;
use super::io::Stream;
use super::{respond, Worker};
use crate::config::{Config, Route};
use crate::hooks::RequestCtx;
use crate::http::Head;
use crate::identity::{AuthError, Authenticator, Identity};
use crate::jsonrpc::{error_body, Code};
use sluice_schema::event::{Decision, Kind};
use std::borrow::Cow;
use std::time::{Duration, Instant};

pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// How long a request waits for a refetch of the issuer's keys (unknown `kid`).
const KEY_WAIT: Duration = Duration::from_secs(2);

/// Who is calling; `Ok(None)` for an anonymous caller when identity is optional.
pub async fn authenticate(auth: &Authenticator, head: &Head, peer: Option<&crate::tls::PeerNames>) -> Result<Option<Identity>, AuthError> {
    let (authz, key) = (head.header_str("authorization"), head.header_str("x-api-key"));
    match auth.check_with_peer(authz, key, peer) {
        Err(AuthError::UnknownKey(kid)) => {
            let Some(jwks) = auth.jwks_for(crate::identity::bearer(authz).unwrap_or_default()) else { return Err(AuthError::UnknownKey(kid)) };
            // The issuer may have rotated its keys: ask for a refetch and wait for it.
            let before = jwks.version();
            jwks.request_refresh();
            let until = Instant::now() + KEY_WAIT;
            while jwks.version() == before && Instant::now() < until {
                glommio::timer::sleep(Duration::from_millis(25)).await;
            }
            auth.check(authz, key)
        }
        // Not a JWT and no API key: an opaque token the issuer can describe.
        Err(AuthError::UnknownApiKey) => match (auth.introspection.as_ref(), crate::identity::opaque_bearer(authz)) {
            (Some(i), Some(token)) => {
                use crate::identity::introspect::{outcome, WAIT};
                let slot = match i.lookup(token) {
                    crate::offload::Lookup::Wait(slot) => slot,
                    now => return outcome(Some(now)).map(Some),
                };
                outcome(crate::offload::wait(&slot, WAIT).await.map(crate::offload::Lookup::from)).map(Some)
            }
            _ => Err(AuthError::UnknownApiKey),
        },
        other => other,
    }
}

/// `http(s)://host`, as the agent addressed this gateway.
fn origin(head: &Head, tls: bool) -> String {
    format!("{}://{}", if tls { "https" } else { "http" }, head.header_str("host").unwrap_or("localhost"))
}

/// The metadata URL for a resource path (RFC 9728 §3: the well-known segment goes first).
fn metadata_url(head: &Head, tls: bool, resource_path: &str) -> String {
    format!("{}{METADATA_PATH}{}", origin(head, tls), resource_path.trim_end_matches('/'))
}

/// 401 with a Bearer challenge and a JSON-RPC error the agent can act on; the refusal is recorded.
#[allow(clippy::too_many_arguments)]
pub async fn refuse(w: &Worker, down: &mut Stream, ctx: &RequestCtx, route: &Route, head: &Head, tls: bool, e: &AuthError, keep_alive: bool, cors: Option<Reader<'_>>) -> std::io::Result<()> {
    tracing::info!(worker = w.id, route = %route.name, reason = %e, "unauthenticated request refused");
    if let Some(em) = &w.emitter {
        let mut d = crate::events::record::base(ctx, &em.recorder().instance, Kind::Decision);
        let reason = e.to_string();
        let client = ctx.client.ip().to_string();
        d.client_ip = Some(Cow::Borrowed(&client));
        d.decision = Some(Decision { action: Cow::Borrowed("deny"), stage: Cow::Borrowed("identity"), rule: None, reason: Some(Cow::Borrowed(&reason)) });
        em.emit(&d);
    }
    // The issuer could not say whether the token is good: nothing for the agent to fix, and
    // no challenge that would send it to get another token.
    if matches!(e, AuthError::IssuerUnavailable(_)) {
        let body = error_body(None, Code::UpstreamUnavailable, "Gateway unavailable", &e.to_string());
        return respond::send(down, 503, "application/json", &body, keep_alive, &[("retry-after", b"2")], cors).await;
    }
    let mut challenge = format!("Bearer resource_metadata=\"{}\"", metadata_url(head, tls, &route.path));
    if !matches!(e, AuthError::Missing) {
        // RFC 6750 §3.1; the description is ours (no credential echoed).
        challenge.push_str(&format!(", error=\"invalid_token\", error_description=\"{}\"", e.to_string().replace('"', "'")));
    }
    let body = error_body(None, Code::Unauthenticated, "Unauthenticated", &e.to_string());
    respond::send(down, 401, "application/json", &body, keep_alive, &[("www-authenticate", challenge.as_bytes())], cors).await
}

/// `GET /.well-known/oauth-protected-resource[/<route path>]`.
pub async fn serve_metadata(down: &mut Stream, cfg: &Config, auth: &Authenticator, head: &Head, tls: bool, keep_alive: bool) -> std::io::Result<()> {
    // Browser clients fetch the metadata cross-origin during their OAuth discovery.
    let cors = super::cors::reader(cfg, head, true);
    let suffix = &head.path()[METADATA_PATH.len()..];
    let resource = auth.resource.clone().unwrap_or_else(|| format!("{}{}", origin(head, tls), if suffix.is_empty() { "/" } else { suffix }));
    let servers: Vec<&str> = auth.all_jwks().map(|j| j.issuer.as_str()).collect();
    let known = suffix.is_empty() || cfg.routes.iter().any(|r| r.path == suffix.trim_end_matches('/'));
    if !known {
        let body = error_body(None, Code::NoRoute, "Not found", &format!("no protected resource at {suffix}; see {METADATA_PATH}"));
        return respond::send(down, 404, "application/json", &body, keep_alive, &[], cors).await;
    }
    let body = serde_json::json!({
        "resource": resource,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Sluice MCP gateway",
    });
    respond::send(down, 200, "application/json", body.to_string().as_bytes(), keep_alive, &[("cache-control", b"max-age=300")], cors).await
}
