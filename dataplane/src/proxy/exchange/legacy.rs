//! The legacy HTTP+SSE transport (MCP 2024-11-05): the stream's `endpoint` event mapped back
//! through the route, the session it names, and the gateway's own answers to the session's posts
//! queued for its stream.

use super::{Track, starts_with_ci};
use crate::proxy::Worker;
use crate::config::{Config, Route};
use crate::error::ProxyError;
use crate::hooks::RequestCtx;
use crate::session::Session;
use crate::sse;
use simd_json::prelude::*;

/// Legacy HTTP+SSE (MCP 2024-11-05): the stream's `endpoint` event names the URL the agent
/// posts its messages to. It goes to the agent rewritten to the same place through the gateway
/// (the route's prefix in place of its upstream path), and the `session_id` (`sessionId`) in it
/// becomes the session's id: the posts name it, so they and this stream's answers are paired
/// and recorded as one session, which ends with the stream. An endpoint that does not map
/// through this route (another host, a path outside the route's upstream path) is withheld —
/// the agent is never sent around the gateway.
#[allow(clippy::too_many_arguments)]
pub(super) fn legacy_endpoint(w: &Worker, cfg: &Config, route: &Route, ctx: &mut RequestCtx, track: &mut Track<'_>, ev: &sse::Event, data: &str, out: &mut Vec<u8>) {
    let up = &cfg.upstreams[route.upstream];
    let Some(mapped) = map_endpoint(data, &up.authority, &route.upstream_path, &route.path) else {
        tracing::warn!(worker = w.id, route = %route.name, upstream = %up.name,
            "legacy SSE endpoint withheld: it does not lead back through this route (point the route at the server's root so its message path is under the route)");
        w.metrics.messages(&route.label, "response", "invalid", 1);
        return;
    };
    ev.encode_with_data(&mapped, out);
    track.legacy_target = Some(format!("{}{}", route.upstream_path, mapped.get(route.path.len()..).unwrap_or("")));
    let Some(sid) = legacy_session_id(&mapped) else {
        return;
    };
    let mut s = Session::new(sid, &route.name);
    s.owner = ctx.identity.as_ref().map(|i| i.subject.clone());
    ctx.gateway_session_id = Some(s.gateway_id.clone());
    ctx.mcp_session_id = Some(sid.to_owned());
    tracing::info!(worker = w.id, route = %route.name, mcp_session = sid, gateway_session = %s.gateway_id, "session started (legacy HTTP+SSE)");
    w.shared.sessions.insert(s, cfg.sessions.max_sessions);
    track.legacy_session = Some(sid.to_owned());
    if let (Some(em), Some(gid)) = (&w.emitter, ctx.gateway_session_id.as_deref()) {
        crate::events::record::session_event(em, ctx, sluice_schema::Kind::SessionStart, gid, None);
    }
}

/// Queue the gateway's answers to a legacy post for the session's stream (`relay_sse` sends
/// them within [`LEGACY_POLL`]). A stream nobody reads would let them pile up without end:
/// past [`LEGACY_OUT_MAX`] waiting, the post is refused instead (503, nothing forwarded).
pub(super) fn legacy_answers(w: &Worker, ctx: &RequestCtx, answers: &[Vec<u8>]) -> Result<(), ProxyError> {
    let Some(sid) = ctx.mcp_session_id.as_deref() else { return Ok(()) };
    let adding: usize = answers.iter().map(Vec::len).sum();
    let waiting = w.shared.sessions.with(sid, |s| {
        let waiting: usize = s.legacy_out.iter().map(Vec::len).sum();
        if waiting + adding <= LEGACY_OUT_MAX {
            s.legacy_out.extend(answers.iter().filter(|a| !a.is_empty()).cloned());
        }
        waiting
    });
    match waiting {
        Some(waiting) if waiting + adding > LEGACY_OUT_MAX => Err(ProxyError::Overloaded(format!(
            "{waiting} bytes of the gateway's answers already wait on this session's SSE stream, and this post's would pass {LEGACY_OUT_MAX}: read the stream (GET …/sse) before posting more, and send large batches in parts"
        ))),
        _ => Ok(()),
    }
}

/// The most answer bytes that may wait for a legacy session's stream.
const LEGACY_OUT_MAX: usize = 1 << 20;

/// How often a legacy stream looks for the gateway's own answers to the session's posts.
pub(super) const LEGACY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The gateway path for an endpoint the upstream named (an absolute path, or a URL on the
/// upstream's own authority): `gateway_prefix` in place of `upstream_path`; `None` when it
/// does not lead back through the route.
fn map_endpoint(data: &str, authority: &str, upstream_path: &str, gateway_prefix: &str) -> Option<String> {
    let path = if data.starts_with('/') && !data.starts_with("//") {
        data
    } else {
        let scheme = ["http://", "https://"].into_iter().find(|p| starts_with_ci(data.as_bytes(), p.as_bytes()))?;
        let rest = &data[scheme.len()..];
        let at = rest.find(['/', '?']).unwrap_or(rest.len());
        if !rest[..at].eq_ignore_ascii_case(authority) {
            return None;
        }
        &rest[at..]
    };
    let below = path.strip_prefix(upstream_path)?;
    if !(below.is_empty() || below.starts_with('/') || below.starts_with('?')) {
        return None;
    }
    let slash = if gateway_prefix.is_empty() && !below.starts_with('/') { "/" } else { "" };
    Some(format!("{gateway_prefix}{slash}{below}"))
}

/// The legacy transport's session id in a message endpoint's query.
pub(super) fn legacy_session_id(target: &str) -> Option<&str> {
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|p| p.strip_prefix("session_id=").or_else(|| p.strip_prefix("sessionId="))).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_endpoints_lead_back_through_the_route_or_nowhere() {
        let m = |data, up_path, prefix| map_endpoint(data, "10.0.0.5:8000", up_path, prefix);
        assert_eq!(m("/messages/?session_id=ab12", "", "/legacy").as_deref(), Some("/legacy/messages/?session_id=ab12"));
        assert_eq!(m("http://10.0.0.5:8000/messages?sessionId=x", "", "").as_deref(), Some("/messages?sessionId=x"));
        assert_eq!(m("HTTPS://10.0.0.5:8000/srv/m?x", "/srv", "/g").as_deref(), Some("/g/m?x"));
        assert_eq!(m("/srv?x", "/srv", "").as_deref(), Some("/?x"));
        assert_eq!(m("/srv?x", "/srv", "/g").as_deref(), Some("/g?x"));
        // Around the gateway, or outside the route's upstream path: withheld.
        for data in ["http://evil.example/messages", "//evil.example/m", "http://10.0.0.5:8001/m", "/srvx/m", "/other/m", "messages?x", "ftp://10.0.0.5:8000/m"] {
            assert_eq!(m(data, "/srv", "/g"), None, "{data}");
        }
        assert_eq!(legacy_session_id("/g/messages/?a=1&session_id=ab12"), Some("ab12"));
        assert_eq!(legacy_session_id("/m?sessionId=X9"), Some("X9"));
        assert_eq!(legacy_session_id("/m?session_id=&x=1"), None);
        assert_eq!(legacy_session_id("/m/session_id=1"), None);
    }
}
