//! Sessions around an exchange: which session a request belongs to (the gateway's session ids,
//! legacy HTTP+SSE posts, MCP 2026-07-28's stateless requests, ownership), a caller's share of
//! the store, and the bookkeeping on the response head (a session opened, ended, renamed).

use super::legacy::legacy_session_id;
use super::Track;
use crate::proxy::Worker;
use crate::config::schema::RouteKind;
use crate::config::{Config, Route};
use crate::error::ProxyError;
use crate::hooks::RequestCtx;
use crate::http::Head;
use crate::session::Session;
use std::net::SocketAddr;

/// Where a request stands among sessions once [`admit`] let it in.
pub(super) struct Admitted {
    /// The position of the session id header the request carried when the gateway's id opened
    /// (the upstream's id is written there on the way up).
    pub(super) upstream_sid_at: Option<usize>,
    /// The request posts to a legacy HTTP+SSE session named in its query.
    pub(super) legacy_post: bool,
}

/// The session a request belongs to, settled in `ctx` (`mcp_session_id`: the upstream's id,
/// `gateway_session_id`: the gateway's), or why it is refused (the refusal is recorded): a
/// session id the gateway did not hand out to this caller on this route, another caller's
/// session, a caller past its share of sessions.
pub(super) fn admit(w: &Worker, cfg: &Config, route: &Route, head: &Head, ctx: &mut RequestCtx, client: SocketAddr) -> Result<Admitted, ProxyError> {
    // The session id an agent holds is the gateway's (`session::Ids`): it opens only for the
    // caller that opened the session, on its route, and names the upstream's id, which is what
    // goes upstream. Checked by key, it holds on every gateway of the deployment: a session
    // opened on another gateway, or before a restart, continues here under its own id.
    let mut upstream_sid_at = None;
    if route.kind == RouteKind::Mcp {
        if let Some(held) = ctx.mcp_session_id.take() {
            let caller = ctx.identity.as_ref().map(|i| i.subject.as_str());
            match cfg.sessions.ids.open(&route.name, caller, &held) {
                Ok((gid, usid)) => {
                    upstream_sid_at = head.headers().position(|(n, _)| n.eq_ignore_ascii_case("mcp-session-id"));
                    ctx.gateway_session_id = Some(gid.to_owned());
                    ctx.mcp_session_id = Some(usid.to_owned());
                }
                Err(why) => {
                    let owner = match why {
                        crate::session::Unopened::Foreign { upstream } => w.shared.sessions.with(upstream, |s| s.owner.clone()).flatten(),
                        crate::session::Unopened::Malformed => None,
                    };
                    match owner.filter(|o| Some(o.as_str()) != caller) {
                        Some(owner) => tracing::warn!(worker = w.id, route = %route.name, caller = caller.unwrap_or("-"), owner = %owner, "a session was presented by another caller than the one that opened it; refused"),
                        None => tracing::info!(worker = w.id, route = %route.name, caller = caller.unwrap_or("-"), problem = ?why, "a session id this gateway did not hand out to this caller on this route (another caller's, another key's, or altered); refused"),
                    }
                    let e = ProxyError::ForeignSession;
                    w.record_refusal(Some(&*ctx), Some(&route.label), client, &e);
                    return Err(e);
                }
            }
        }
    }
    // A legacy HTTP+SSE post names its session in the query (see `legacy_endpoint`).
    let mut legacy_post = false;
    if ctx.mcp_session_id.is_none() && route.kind == RouteKind::Mcp {
        if let Some(sid) = legacy_session_id(head.target()).filter(|sid| w.shared.sessions.with(sid, |_| ()).is_some()) {
            ctx.mcp_session_id = Some(sid.to_owned());
            legacy_post = true;
        }
    }
    // MCP 2026-07-28 has no sessions: every request stands alone. What the gateway keeps per
    // session — the policy's `session` facts, the record's `session` that audits and chain
    // rules follow — would be lost, so a caller's stateless requests on a route are one
    // session of the gateway's, until `sessions.idle_timeout` passes without one. It is keyed
    // by the authenticated caller alone: nothing the client says (its `clientInfo`) can start
    // a fresh one and shed what the policy knows.
    if ctx.mcp_session_id.is_none() && route.kind == RouteKind::Mcp && ctx.protocol_version.as_deref().is_some_and(is_stateless_version) {
        let caller = ctx.identity.as_ref().map(|i| i.subject.clone());
        let key = Session::caller_key(&route.name, caller.as_deref());
        let (gid, made) = w.shared.sessions.get_or_insert(&key, cfg.sessions.max_sessions, || {
            let mut s = Session::new(&key, &route.name);
            s.owner = caller.clone();
            s.stateless = true;
            s.protocol_version = ctx.protocol_version.clone();
            s
        });
        ctx.stateless = true;
        ctx.mcp_session_id = Some(key);
        ctx.gateway_session_id = Some(gid);
        if made {
            tracing::info!(worker = w.id, route = %route.name, caller = caller.as_deref().unwrap_or("-"), gateway_session = ctx.gateway_session_id.as_deref().unwrap_or(""), "session started (the caller's stateless requests, MCP 2026-07-28)");
            if let (Some(em), Some(gid)) = (&w.emitter, ctx.gateway_session_id.as_deref()) {
                crate::events::record::session_event(em, &*ctx, sluice_schema::Kind::SessionStart, gid, None);
            }
        }
    }
    // A legacy HTTP+SSE stream (a GET naming no session) opens a session once the upstream
    // names its endpoint: the caller's share is checked before the upstream makes one, as for
    // `initialize`.
    if ctx.mcp_session_id.is_none() && route.kind == RouteKind::Mcp && head.method() == "GET" {
        if let Err(e) = within_session_share(w, cfg, &*ctx) {
            w.record_refusal(Some(&*ctx), Some(&route.label), client, &e);
            return Err(e);
        }
    }
    // The gateway's session id keys every event of the session (Kafka partition, order). A
    // session belongs to the caller that opened it: another caller presenting its id (learned
    // from a log, a proxy, a shared machine) would continue its upstream state and write into
    // its record, so it is answered as if the session did not exist.
    if let Some(sid) = ctx.mcp_session_id.as_deref() {
        let caller = ctx.identity.as_ref().map(|i| i.subject.as_str());
        match w.shared.sessions.with(sid, |s| (s.gateway_id.clone(), s.owner.clone())) {
            Some((gid, owner)) => {
                // Ids are checked by key above; a legacy session (named in the query) by owner.
                let other_gateway_id = ctx.gateway_session_id.as_deref().is_some_and(|g| g != gid);
                if other_gateway_id || owner.as_deref().is_some_and(|o| Some(o) != caller) {
                    tracing::warn!(worker = w.id, route = %route.name, caller = caller.unwrap_or("-"), owner = owner.as_deref().unwrap_or("-"), gateway_session = %gid, "a session was presented by another caller than the one that opened it; refused");
                    let e = ProxyError::ForeignSession;
                    w.record_refusal(Some(&*ctx), Some(&route.label), client, &e);
                    return Err(e);
                }
                ctx.gateway_session_id = Some(gid);
            }
            None => {
                if let Some(gid) = ctx.gateway_session_id.as_deref() {
                    // Opened on another gateway or before a restart: this gateway takes it up
                    // under the same id (its events stay one session in the record) — within
                    // the caller's share here, as a new one would be.
                    if let Err(e) = within_session_share(w, cfg, &*ctx) {
                        w.record_refusal(Some(&*ctx), Some(&route.label), client, &e);
                        return Err(e);
                    }
                    let mut s = Session::new(sid, &route.name);
                    s.gateway_id = gid.to_owned();
                    s.owner = caller.map(str::to_owned);
                    tracing::info!(worker = w.id, route = %route.name, mcp_session = sid, gateway_session = gid, "session continued here (opened on another gateway or before a restart)");
                    w.shared.sessions.insert(s, cfg.sessions.max_sessions);
                }
            }
        }
    }
    Ok(Admitted { upstream_sid_at, legacy_post })
}

/// One caller may not fill the store (evicting every other caller's sessions): past its
/// share (`sessions.max_per_caller`), a new session is refused before the upstream makes one.
pub(super) fn within_session_share(w: &Worker, cfg: &Config, ctx: &RequestCtx) -> Result<(), ProxyError> {
    let cap = cfg.sessions.max_per_caller;
    let Some(caller) = ctx.identity.as_ref().map(|i| i.subject.as_str()).filter(|_| cap > 0) else { return Ok(()) };
    let held = w.shared.sessions.owned(caller);
    if held >= cap {
        return Err(ProxyError::TooManySessions { held });
    }
    Ok(())
}

/// Does this `MCP-Protocol-Version` name a revision without sessions (2026-07-28 and later)?
fn is_stateless_version(v: &str) -> bool {
    // Revisions are dates: they compare as text.
    v.len() == 10 && v.as_bytes()[4] == b'-' && v >= "2026-07-28"
}

/// Session bookkeeping on the response head: a new session on `initialize`, release on DELETE
/// or on the upstream's 404 for a session it no longer knows.
pub(super) fn after_response_head(w: &Worker, cfg: &Config, route: &Route, ctx: &mut RequestCtx, track: &mut Track<'_>, head: &Head, method: &str) {
    let sessions = &w.shared.sessions;
    let status = head.status;
    let init = track.init.take();
    if let (Some(init), None, Some(sid)) = (&init, head.header_str("mcp-session-id"), ctx.mcp_session_id.as_deref()) {
        // A legacy HTTP+SSE session (opened by its stream) learns who the client is.
        sessions.with(sid, |s| {
            s.client_info = init.get("clientInfo").cloned();
            s.client_capabilities = init.get("capabilities").cloned();
            s.protocol_version = init.get("protocolVersion").and_then(|v| v.as_str()).map(str::to_owned);
        });
    }
    if let (Some(init), Some(new_sid)) = (init, head.header_str("mcp-session-id")) {
        if (200..300).contains(&status) {
            let mut s = Session::new(new_sid, &route.name);
            s.owner = ctx.identity.as_ref().map(|i| i.subject.clone());
            if let Some(g) = &ctx.gateway_session_id {
                s.gateway_id = g.clone();
            }
            s.client_info = init.get("clientInfo").cloned();
            s.client_capabilities = init.get("capabilities").cloned();
            s.protocol_version = init.get("protocolVersion").and_then(|v| v.as_str()).map(str::to_owned);
            s.messages_in = 1;
            ctx.gateway_session_id = Some(s.gateway_id.clone());
            tracing::info!(worker = w.id, route = %route.name, mcp_session = new_sid, gateway_session = %s.gateway_id, "session started");
            sessions.insert(s, cfg.sessions.max_sessions);
            ctx.mcp_session_id = Some(new_sid.to_owned());
            if let (Some(em), Some(gid)) = (&w.emitter, ctx.gateway_session_id.as_deref()) {
                crate::events::record::session_event(em, ctx, sluice_schema::Kind::SessionStart, gid, None);
            }
        }
        return;
    }
    let Some(sid) = ctx.mcp_session_id.as_deref() else {
        return;
    };
    // (A stateless session is the gateway's: no upstream answer ends it.)
    if !ctx.stateless && ((method == "DELETE" && (200..300).contains(&status)) || status == 404) {
        let why = if status == 404 { "upstream no longer knows the session (404)" } else { "DELETE" };
        if let Some(gid) = end_session(w, ctx, route, sid, why) {
            ctx.gateway_session_id = Some(gid);
        }
    } else if let Some(gid) = sessions.with(sid, |s| s.gateway_id.clone()) {
        ctx.gateway_session_id = Some(gid);
    }
}

/// The session id the agent gets for the one the upstream names in its answer: the gateway's
/// (see `admit`), bound to the route and the caller.
/// `held`: the id the request carried, when it opened. Servers that repeat their session id on
/// every answer get it back as it came (the same caller, route and ids: minting it again would
/// hash the same tag).
pub(super) fn session_token(cfg: &Config, route: &Route, ctx: &mut RequestCtx, head: &Head, held: Option<&str>) -> Option<String> {
    let usid = head.header_str("mcp-session-id").filter(|_| route.kind == RouteKind::Mcp)?;
    if let Some(h) = held.filter(|_| ctx.mcp_session_id.as_deref() == Some(usid)) {
        return Some(h.to_owned());
    }
    let gid = ctx.gateway_session_id.get_or_insert_with(crate::ids::new_id);
    Some(cfg.sessions.ids.mint(&route.name, ctx.identity.as_ref().map(|i| i.subject.as_str()), gid, usid))
}

/// Forget a session and record its end; its gateway id, when it was known.
pub(super) fn end_session(w: &Worker, ctx: &RequestCtx, route: &Route, sid: &str, why: &str) -> Option<String> {
    let s = w.shared.sessions.remove(sid)?;
    tracing::info!(worker = w.id, route = %route.name, mcp_session = sid, gateway_session = %s.gateway_id, why, "session ended");
    if let Some(em) = &w.emitter {
        crate::events::record::session_event(em, ctx, sluice_schema::Kind::SessionEnd, &s.gateway_id, Some(why));
    }
    Some(s.gateway_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_from_2026_07_28_are_stateless() {
        for (v, stateless) in [("2026-07-28", true), ("2027-01-15", true), ("2025-11-25", false), ("2025-03-26", false), ("2026-07-2", false), ("draft", false), ("", false), ("2026-07-28x", false)] {
            assert_eq!(is_stateless_version(v), stateless, "{v}");
        }
    }
}
