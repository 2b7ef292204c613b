//! What can go wrong with one exchange, who is at fault, and — in exactly one place — which
//! HTTP status and JSON-RPC error code the agent gets for it.

use crate::http::{body::FramingError, HeadError};
use crate::jsonrpc::{BodyError, Code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Head(#[from] HeadError),
    #[error("{0}")]
    Framing(#[from] FramingError),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("Expect: {0} is not supported; only 100-continue is")]
    Expectation(String),
    #[error("the request was not received completely in time")]
    ClientTimeout,
    #[error("no route matches {0}; check the URL path")]
    NoRoute(String),
    #[error("requests from web pages at {0} may not call this gateway (protection against DNS rebinding and cross-site calls); if this is your web client, add its origin to gateway.allowed_origins")]
    ForbiddenOrigin(String),
    #[error("{0}")]
    BadHost(&'static str),
    #[error("{0}")]
    BadPath(&'static str),
    #[error("the request has more than one {0} header; servers differ on which one counts, so the gateway does not forward it: send it once")]
    BadHeader(&'static str),
    #[error("this gateway does not answer to the name {0} (protection against DNS rebinding: a web page can point a name of its own at the gateway); if it is a name of this gateway, add it to gateway.allowed_hosts, or call it by its IP address")]
    MisdirectedHost(String),
    #[error("no session with this id belongs to the caller; start one with initialize (a session id is not a credential: each caller uses its own)")]
    ForeignSession,
    #[error("{0}")]
    JsonRpc(#[from] BodyError),
    #[error("{0}")]
    HeaderMismatch(String),
    #[error("MCP POST bodies must be JSON-RPC; the body is empty")]
    EmptyBody,
    #[error("the request body is declared {0} but is not UTF-8; the gateway inspects text and form bodies as UTF-8: send it as UTF-8 (or, if it is binary, as application/octet-stream)")]
    NotUtf8(String),
    #[error("the request body has Content-Encoding: {0}, which the gateway cannot inspect; send it uncompressed")]
    Encoded(String),
    #[error("{0}; the gateway does not forward what it cannot inspect")]
    Uninspectable(String),
    #[error("upstream {upstream} cannot be reached: {reason}")]
    UpstreamConnect { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {secs:.1}s ({phase})")]
    UpstreamTimeout { upstream: String, phase: &'static str, secs: f64 },
    #[error("upstream {upstream} broke the exchange: {reason}")]
    UpstreamProtocol { upstream: String, reason: String },
    #[error("the gateway holds no credential for upstream {upstream} right now ({reason}); retry shortly")]
    NoUpstreamCredential { upstream: String, reason: String },
    #[error("upstream {upstream} refused the credential the gateway sends it (HTTP 401); {}", if *.renewing { "the gateway is renewing its token: retry shortly" } else { "its credential in the gateway's configuration needs renewing by an operator" })]
    UpstreamRefusedCredential { upstream: String, renewing: bool },
    /// `oauth_token_exchange`: no token for this caller. `refused`: the caller's token cannot
    /// be exchanged (none, or the identity provider said no); otherwise the provider could not
    /// be asked.
    #[error("upstream {upstream} takes a token the identity provider issues in exchange for the caller's own access token: {reason}")]
    NotExchanged { upstream: String, reason: String, refused: bool },
    #[error("the gateway is shutting down; retry on another instance")]
    ShuttingDown,
    #[error("the gateway cannot record calls right now (its event spool is full or not writable), so it does not forward them; retry later or on another instance")]
    RecordingUnavailable,
    #[error("{0}; retry shortly, or on another instance")]
    Overloaded(String),
    #[error("this caller holds {held} open sessions, the most one caller may hold on this gateway (sessions.max_per_caller); end the ones it no longer uses (HTTP DELETE with their Mcp-Session-Id; a legacy HTTP+SSE session by closing its stream) or wait until they idle out, then open a new one")]
    TooManySessions { held: usize },
}

impl ProxyError {
    pub fn fault(&self) -> Fault {
        use ProxyError::*;
        match self {
            Head(_) | Framing(_) | BodyTooLarge { .. } | Expectation(_) | ClientTimeout | NoRoute(_) | ForbiddenOrigin(_) | BadHost(_) | BadPath(_) | BadHeader(_) | MisdirectedHost(_) | ForeignSession | JsonRpc(_) | HeaderMismatch(_) | EmptyBody | NotUtf8(_) | Encoded(_) | Uninspectable(_) | TooManySessions { .. } | NotExchanged { refused: true, .. } => Fault::Client,
            NotExchanged { refused: false, .. } => Fault::Upstream,
            UpstreamConnect { .. } | UpstreamTimeout { .. } | UpstreamProtocol { .. } | NoUpstreamCredential { .. } | UpstreamRefusedCredential { .. } => Fault::Upstream,
            ShuttingDown | RecordingUnavailable | Overloaded(_) => Fault::Internal,
        }
    }

    pub fn status(&self) -> u16 {
        use ProxyError::*;
        match self {
            Head(HeadError::TooLarge { .. } | HeadError::TooManyHeaders) => 431,
            Head(_) | Framing(_) | BadHost(_) | BadPath(_) | BadHeader(_) | JsonRpc(_) | HeaderMismatch(_) | EmptyBody => 400,
            BodyTooLarge { .. } => 413,
            NotUtf8(_) | Encoded(_) | Uninspectable(_) => 415,
            Expectation(_) => 417,
            ClientTimeout => 408,
            NoRoute(_) | ForeignSession => 404,
            ForbiddenOrigin(_) | NotExchanged { refused: true, .. } => 403,
            NotExchanged { refused: false, .. } => 503,
            MisdirectedHost(_) => 421,
            UpstreamConnect { .. } | UpstreamProtocol { .. } | UpstreamRefusedCredential { .. } => 502,
            NoUpstreamCredential { .. } => 503,
            UpstreamTimeout { .. } => 504,
            ShuttingDown | RecordingUnavailable | Overloaded(_) => 503,
            TooManySessions { .. } => 429,
        }
    }

    pub fn code(&self) -> Code {
        use ProxyError::*;
        match self {
            JsonRpc(e) => e.code(),
            HeaderMismatch(_) => Code::HeaderMismatch,
            EmptyBody | NotUtf8(_) | Encoded(_) | Uninspectable(_) | Head(_) | Framing(_) | BadHost(_) | BadPath(_) | BadHeader(_) | ForeignSession | Expectation(_) | ClientTimeout => Code::InvalidRequest,
            BodyTooLarge { .. } => Code::TooLarge,
            NoRoute(_) => Code::NoRoute,
            ForbiddenOrigin(_) | MisdirectedHost(_) | NotExchanged { refused: true, .. } => Code::Refused,
            NotExchanged { refused: false, .. } => Code::UpstreamUnavailable,
            UpstreamConnect { .. } | UpstreamProtocol { .. } | NoUpstreamCredential { .. } | UpstreamRefusedCredential { .. } => Code::UpstreamUnavailable,
            UpstreamTimeout { .. } => Code::UpstreamTimeout,
            ShuttingDown => Code::ShuttingDown,
            RecordingUnavailable => Code::RecordingUnavailable,
            Overloaded(_) => Code::Overloaded,
            TooManySessions { .. } => Code::RateLimited,
        }
    }

    /// A short message for the JSON-RPC `error.message`.
    pub fn title(&self) -> &'static str {
        match self.fault() {
            Fault::Client => "Invalid request",
            Fault::Upstream => "Upstream error",
            Fault::Internal => "Gateway unavailable",
        }
    }

    /// The reason as the session record keeps it: the agent's answer may quote what the
    /// client sent (a path, a header value, the character JSON parsing stopped at), which no
    /// stage has inspected, so the record says what was wrong without it.
    pub fn recorded_reason(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        use ProxyError::*;
        match self {
            NoRoute(_) => Cow::Borrowed("no route matches the request path"),
            ForbiddenOrigin(_) => Cow::Borrowed("the request came from a web page whose origin gateway.allowed_origins does not list"),
            MisdirectedHost(_) => Cow::Borrowed("the request named the gateway by a host name gateway.allowed_hosts does not list"),
            Expectation(_) => Cow::Borrowed("an Expect header other than 100-continue"),
            NotUtf8(_) => Cow::Borrowed("the request body is declared as text but is not UTF-8"),
            Encoded(_) => Cow::Borrowed("the request body has a Content-Encoding the gateway cannot inspect"),
            JsonRpc(BodyError::Parse(_)) => Cow::Borrowed("the body is not JSON the gateway can read"),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// Does the connection stay usable after this error is answered?
    pub fn keeps_connection(&self) -> bool {
        matches!(self, ProxyError::NoRoute(_) | ProxyError::ForeignSession | ProxyError::ForbiddenOrigin(_) | ProxyError::JsonRpc(_) | ProxyError::HeaderMismatch(_) | ProxyError::EmptyBody | ProxyError::NotUtf8(_) | ProxyError::Encoded(_) | ProxyError::Uninspectable(_) | ProxyError::TooManySessions { .. } | ProxyError::NotExchanged { .. })
            || self.fault() == Fault::Upstream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let e = ProxyError::UpstreamTimeout { upstream: "u".into(), phase: "first byte", secs: 1.0 };
        assert_eq!((e.status(), e.code().value(), e.fault()), (504, -32002, Fault::Upstream));
        let e = ProxyError::Head(HeadError::TooLarge { limit: 1 });
        assert_eq!(e.status(), 431);
        let e = ProxyError::JsonRpc(BodyError::Parse("x".into()));
        assert_eq!((e.status(), e.code().value()), (400, -32700));
        assert_eq!(ProxyError::BodyTooLarge { limit: 1 }.status(), 413);
        let e = ProxyError::MisdirectedHost("rebind.example".into());
        assert_eq!((e.status(), e.code().value(), e.fault()), (421, -32004, Fault::Client));
        assert_eq!(ProxyError::BadHost("x").status(), 400);
        // The provider's refusal to exchange the caller's token is the caller's (403, the
        // connection kept); the provider out of reach is the gateway's (503).
        let refused = ProxyError::NotExchanged { upstream: "u".into(), reason: "r".into(), refused: true };
        assert_eq!((refused.status(), refused.code().value(), refused.fault(), refused.keeps_connection()), (403, -32004, Fault::Client, true));
        let down = ProxyError::NotExchanged { upstream: "u".into(), reason: "r".into(), refused: false };
        assert_eq!((down.status(), down.code().value(), down.fault(), down.keeps_connection()), (503, -32001, Fault::Upstream, true));
    }

    /// What the client sent stays in its answer, never in the record's reason.
    #[test]
    fn recorded_reasons_quote_nothing_the_client_sent() {
        let sent = "AKIAQYLPMN5HFIQR7XQB";
        let parse = simd_json::to_borrowed_value(&mut format!("{{\"k\": {sent}}}").into_bytes()).map(drop).unwrap_err();
        for e in [
            ProxyError::NoRoute(format!("/x/{sent}")),
            ProxyError::ForbiddenOrigin(format!("https://{sent}.example")),
            ProxyError::MisdirectedHost(format!("{sent}.example:8080")),
            ProxyError::Expectation(sent.into()),
            ProxyError::NotUtf8(format!("text/plain; x={sent}")),
            ProxyError::Encoded(sent.into()),
            ProxyError::JsonRpc(BodyError::Parse(format!("{} {sent}", crate::jsonrpc::json_error(&parse)))),
        ] {
            assert!(e.to_string().contains(sent), "the agent's answer says what was wrong: {e}");
            assert!(!e.recorded_reason().contains(sent), "{e} -> {}", e.recorded_reason());
        }
        let e = ProxyError::BodyTooLarge { limit: 7 };
        assert_eq!(e.recorded_reason(), e.to_string(), "the gateway's own words are kept whole");
    }
}
