//! The access log (`gateway.access_log = true`): one line per HTTP exchange, target
//! `sluice::access` at level info, in the log's format (`--log-format json` gives one JSON
//! object per line). It says what the exchange was and how it ended; what was in it is in the
//! session record. Nothing detection found is written: the path of a plain HTTP route is the
//! one the record keeps (masked), an MCP route's is the route's own (its calls are named by
//! their JSON-RPC method and tool, `[REDACTED]` where those held a finding).

use crate::config::schema::RouteKind;
use crate::config::Route;
use crate::hooks::RequestCtx;
use crate::session::Pending;
use std::net::SocketAddr;
use std::time::Duration;

/// An exchange that reached a route: who, what, how it ended.
/// `first`: the first request the exchange sent (of `calls`).
pub(crate) fn exchange(ctx: &RequestCtx, route: &Route, first: Option<&Pending>, calls: usize, status: u16, elapsed: Duration) {
    use crate::detect::hook::{ENVELOPE_METHOD, ENVELOPE_TOOL, REDACTED};
    let path = match (&route.kind, &ctx.http_target) {
        (RouteKind::Mcp, _) | (_, None) => route.path.as_str(),
        (_, Some(t)) => t.as_str(),
    };
    fn masked<'a>(ctx: &RequestCtx, bit: u8, v: Option<&'a str>) -> &'a str {
        if ctx.envelope_masked & bit != 0 {
            REDACTED
        } else {
            v.unwrap_or("-")
        }
    }
    let decision = ctx.decision.as_ref();
    tracing::info!(
        target: "sluice::access",
        client = %ctx.client,
        route = %route.name,
        upstream = %ctx.upstream,
        method = crate::metrics::method_label(&ctx.http_method),
        path,
        status,
        us = elapsed.as_micros() as u64,
        subject = ctx.identity.as_ref().map_or("-", |i| i.subject.as_str()),
        session = ctx.gateway_session_id.as_deref().unwrap_or("-"),
        rpc = masked(ctx, ENVELOPE_METHOD, first.map(|p| p.method.as_str())),
        tool = masked(ctx, ENVELOPE_TOOL, first.and_then(|p| p.tool.as_deref())),
        calls,
        decision = decision.map_or("-", |d| d.outcome.name()),
        rule = decision.and_then(|d| d.rule.as_deref()).unwrap_or("-"),
        findings = ctx.findings.len(),
        "access"
    );
}

/// An exchange answered before a route's stages ran: a refusal (no route, a bad head or body,
/// a foreign session, …, with the reason as the record keeps it, quoting nothing the client
/// sent) or a CORS preflight.
pub(crate) fn early(client: SocketAddr, route: Option<&str>, method: Option<&str>, status: u16, elapsed: Duration, reason: &str) {
    tracing::info!(
        target: "sluice::access",
        client = %client,
        route = route.unwrap_or("-"),
        method = method.map_or("-", crate::metrics::method_label),
        status,
        us = elapsed.as_micros() as u64,
        reason,
        "access"
    );
}
