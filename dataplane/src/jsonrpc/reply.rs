//! JSON-RPC error bodies the gateway writes itself. Codes in `-32000..=-32099` are the
//! implementation-defined server errors of JSON-RPC 2.0; each one Sluice uses is listed here.

use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    ParseError,
    InvalidRequest,
    InternalError,
    /// The upstream could not be reached, refused, or broke the exchange.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The request was larger than a configured limit.
    TooLarge,
    /// A gateway stage (policy, detection) refused the message.
    Refused,
    /// No route matches the request.
    NoRoute,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The gateway cannot record the call, so it does not forward it (fail closed).
    RecordingUnavailable,
    /// The caller is not authenticated.
    Unauthenticated,
    /// The policy denies the call (the reason says which rule and what to do).
    PolicyDenied,
    /// A policy rate limit is exhausted; the reason says when to retry.
    RateLimited,
    /// The call needs a human's approval, which was not given (denied, expired, unavailable).
    ApprovalRequired,
    /// The gateway is at a connection or memory limit; retry shortly.
    Overloaded,
    /// The tool's definition changed since it was pinned; an operator must accept it.
    ToolChanged,
    /// MCP's own code (2026-07-28): an `Mcp-Method`, `Mcp-Name` or `Mcp-Param-*` header does
    /// not repeat the body (see `mirror`).
    HeaderMismatch,
}

impl Code {
    pub fn value(self) -> i64 {
        match self {
            Code::ParseError => -32700,
            Code::InvalidRequest => -32600,
            Code::InternalError => -32603,
            Code::UpstreamUnavailable => -32001,
            Code::UpstreamTimeout => -32002,
            Code::TooLarge => -32003,
            Code::Refused => -32004,
            Code::NoRoute => -32005,
            Code::ShuttingDown => -32006,
            Code::RecordingUnavailable => -32007,
            Code::Unauthenticated => -32008,
            Code::PolicyDenied => -32009,
            Code::RateLimited => -32010,
            Code::ApprovalRequired => -32011,
            Code::Overloaded => -32012,
            Code::ToolChanged => -32013,
            Code::HeaderMismatch => -32020,
        }
    }
}

/// `{"jsonrpc":"2.0","id":…,"error":{"code":…,"message":…,"data":{"gateway":"sluice",…}}}`.
/// `id` is the JSON text of the request id (as in `MessageInfo::id`), or `None` for `null`.
pub fn error_body(id: Option<&str>, code: Code, message: &str, reason: &str) -> Vec<u8> {
    let id: serde_json::Value = id.and_then(|s| serde_json::from_str(s).ok()).unwrap_or(serde_json::Value::Null);
    let body = json!({ "jsonrpc": "2.0", "id": id, "error": error_object(code, message, reason) });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The `error` member of a gateway error: `{"code":…,"message":…,"data":{"gateway":"sluice","reason":…}}`.
pub fn error_object(code: Code, message: &str, reason: &str) -> serde_json::Value {
    json!({ "code": code.value(), "message": message, "data": { "gateway": "sluice", "reason": reason } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_keeps_id_type() {
        let v: serde_json::Value = serde_json::from_slice(&error_body(Some("\"7\""), Code::UpstreamTimeout, "m", "r")).unwrap();
        assert_eq!(v["id"], "7");
        assert_eq!(v["error"]["code"], -32002);
        let v: serde_json::Value = serde_json::from_slice(&error_body(Some("7"), Code::ParseError, "m", "r")).unwrap();
        assert_eq!(v["id"], 7);
        let v: serde_json::Value = serde_json::from_slice(&error_body(None, Code::ParseError, "m", "r")).unwrap();
        assert!(v["id"].is_null());
        assert_eq!(v["error"]["data"]["reason"], "r");
    }
}
