//! JSON-RPC 2.0 messages: parsing (simd-json, single and batch), classification of each
//! message (method, id, tool, resource, prompt, error) and error bodies. No I/O.

pub mod classify;
pub mod reply;

pub use classify::{classify, Kind, MessageInfo};
pub use reply::{error_body, error_object, Code};

use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// A parsed JSON-RPC body: one message or a batch of them, borrowing from the body buffer.
#[derive(Debug)]
pub struct Body<'a> {
    pub batch: bool,
    pub values: Vec<BorrowedValue<'a>>,
    pub infos: Vec<MessageInfo>,
}

/// Why a body is not JSON-RPC. `Parse` is `-32700`, `Invalid` is `-32600`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("body is not JSON the gateway can read: {0}")]
    Parse(String),
    #[error("invalid JSON-RPC message{}: {reason}", index.map(|i| format!(" at batch index {i}")).unwrap_or_default())]
    Invalid { index: Option<usize>, reason: &'static str },
}

impl BodyError {
    pub fn code(&self) -> Code {
        match self {
            BodyError::Parse(_) => Code::ParseError,
            BodyError::Invalid { .. } => Code::InvalidRequest,
        }
    }
}

/// Parse and classify a JSON-RPC body. simd-json parses in place, so `buf` is modified.
pub fn parse(buf: &mut [u8]) -> Result<Body<'_>, BodyError> {
    let value = simd_json::to_borrowed_value(buf).map_err(|e| BodyError::Parse(json_error(&e)))?;
    let (batch, values) = match value {
        BorrowedValue::Array(items) => {
            if items.is_empty() {
                return Err(BodyError::Invalid { index: None, reason: "empty batch" });
            }
            (true, *items)
        }
        other => (false, vec![other]),
    };
    let mut infos = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let info = classify(v).map_err(|reason| BodyError::Invalid { index: batch.then_some(i), reason })?;
        infos.push(info);
    }
    Ok(Body { batch, values, infos })
}

/// Why a body did not parse, for the sender. JSON allows numbers of any size; the gateway
/// reads integers up to 64 bits and numbers within a double's range (what it cannot read, it
/// cannot inspect or re-encode exactly), and says so rather than calling the body invalid.
pub fn json_error(e: &simd_json::Error) -> String {
    match e.error() {
        simd_json::ErrorType::InvalidNumber => format!(
            "the number at character {} is malformed, or larger than the gateway reads exactly (integers up to 64 bits, \
             numbers within a double's range); send such a value as a string",
            e.index()
        ),
        _ => e.to_string(),
    }
}

/// Whether `m` is a method the MCP specification defines (such names need no scan).
pub fn is_mcp_method(m: &str) -> bool {
    matches!(
        m,
        "initialize"
            | "ping"
            | "tools/list"
            | "tools/call"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "resources/subscribe"
            | "resources/unsubscribe"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete"
            | "logging/setLevel"
            | "sampling/createMessage"
            | "elicitation/create"
            | "roots/list"
            | "notifications/initialized"
            | "notifications/cancelled"
            | "notifications/progress"
            | "notifications/message"
            | "notifications/resources/updated"
            | "notifications/resources/list_changed"
            | "notifications/tools/list_changed"
            | "notifications/prompts/list_changed"
            | "notifications/roots/list_changed"
    )
}

/// Serialize a body whose values may have been changed by hooks.
pub fn encode(values: &[BorrowedValue<'_>], batch: bool, out: &mut Vec<u8>) {
    if batch {
        out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = v.write(out);
        }
        out.push(b']');
    } else if let Some(v) = values.first() {
        let _ = v.write(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let mut b = b"{\"jsonrpc\":\"2.0\",".to_vec();
        assert!(matches!(parse(&mut b), Err(BodyError::Parse(_))));
        let mut b = b"[]".to_vec();
        assert_eq!(parse(&mut b).unwrap_err().to_string(), "invalid JSON-RPC message: empty batch");
        // Valid JSON, but a number beyond 64 bits: said so, with what to do.
        let mut b = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n":123456789012345678901234567890}}"#.to_vec();
        let e = parse(&mut b).unwrap_err().to_string();
        assert!(e.contains("number at character") && e.contains("send such a value as a string"), "{e}");
        let mut b = br#"[{"jsonrpc":"2.0","method":"ping","id":1},{"jsonrpc":"1.0","method":"x"}]"#.to_vec();
        let e = parse(&mut b).unwrap_err();
        assert_eq!(e.code(), Code::InvalidRequest);
        assert!(e.to_string().contains("batch index 1"), "{e}");
    }

    #[test]
    fn batch_round_trip() {
        let src = br#"[{"jsonrpc":"2.0","method":"tools/call","id":"a","params":{"name":"echo","arguments":{"m":"\u0041"}}},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        let mut b = src.to_vec();
        let body = parse(&mut b).unwrap();
        assert!(body.batch);
        assert_eq!(body.infos[0].tool.as_deref(), Some("echo"));
        assert_eq!(body.infos[1].kind, Kind::Notification);
        let mut out = Vec::new();
        encode(&body.values, body.batch, &mut out);
        let a: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let b: serde_json::Value = serde_json::from_slice(src).unwrap();
        assert_eq!(a, b);
    }
}
