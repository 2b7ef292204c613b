//! JSON-RPC 2.0 messages: parsing (simd-json, single and batch), classification of each
//! message (method, id, tool, resource, prompt, error) and error bodies. No I/O.

pub mod classify;
pub mod mirror;
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
    #[error("the JSON nests arrays and objects deeper than {MAX_DEPTH} levels, which the gateway does not read")]
    TooDeep,
    #[error("an object in the JSON (at nesting depth {depth}) names the same member twice; JSON readers differ on which one counts (RFC 8259 §4), so the gateway does not pass it on: send each member once")]
    DuplicateMember { depth: usize },
}

impl BodyError {
    pub fn code(&self) -> Code {
        match self {
            BodyError::Parse(_) => Code::ParseError,
            BodyError::Invalid { .. } | BodyError::TooDeep | BodyError::DuplicateMember { .. } => Code::InvalidRequest,
        }
    }
}

/// Arrays and objects nest at most this deep in JSON the gateway reads (serde_json's default
/// limit too): the walks over a parsed value recurse, and a few hundred kilobytes of `[` would
/// otherwise exhaust a worker's stack and take the process down.
pub const MAX_DEPTH: usize = 128;

/// Parse JSON (in place: `buf` is modified) into a value, refusing what could exhaust the
/// stack ([`MAX_DEPTH`]) or what two readers could read differently: an object naming a member
/// twice (simd-json keeps both and its lookups find the first; most upstreams' readers take the
/// last — a policy would decide on one tool name and the upstream call another). Both are
/// checked on simd-json's tape, which is built without recursion, before the value is.
pub fn read_value(buf: &mut [u8]) -> Result<BorrowedValue<'_>, BodyError> {
    let len = buf.len();
    let tape = BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            let tape = simd_json::to_tape_with_buffers(buf, &mut kept);
            if len > KEEP_BUFFERS_FOR {
                *kept = simd_json::Buffers::default();
            }
            tape
        }
        // Not reentrant today; should it become so, the inner parse gets buffers of its own.
        Err(_) => simd_json::to_tape(buf),
    });
    let tape = tape.map_err(|e| BodyError::Parse(json_error(&e)))?;
    check_tape(&tape.0)?;
    Ok(simd_json::value::lazy::Value::from_tape(tape.as_value()).into_value())
}

/// Bodies up to this size leave simd-json's working buffers (a copy of the input, its
/// structural index, decoded strings) to the thread's next parse; a larger one's are freed.
const KEEP_BUFFERS_FOR: usize = 256 * 1024;

thread_local! {
    /// simd-json's working buffers, one set per thread (a worker parses one body at a time):
    /// four allocations per parse fewer on the request path.
    static BUFFERS: std::cell::RefCell<simd_json::Buffers> = std::cell::RefCell::new(simd_json::Buffers::new(4096));
}

/// Nesting depth and member names of every object, in one pass over the tape (`count` of an
/// array or object is the number of nodes inside it). Allocates only for objects of more than
/// 16 members.
fn check_tape(nodes: &[simd_json::Node<'_>]) -> Result<(), BodyError> {
    use simd_json::Node;
    // Where each open array or object ends on the tape.
    let mut ends = [0usize; MAX_DEPTH];
    let mut depth = 0;
    for (i, node) in nodes.iter().enumerate() {
        while depth > 0 && i >= ends[depth - 1] {
            depth -= 1;
        }
        let (len, count, object) = match *node {
            Node::Array { len, count } => (len, count, false),
            Node::Object { len, count } => (len, count, true),
            _ => continue,
        };
        if depth == MAX_DEPTH {
            return Err(BodyError::TooDeep);
        }
        ends[depth] = i + 1 + count;
        depth += 1;
        if object && len > 1 && has_duplicate_key(nodes, i + 1, len) {
            return Err(BodyError::DuplicateMember { depth });
        }
    }
    Ok(())
}

/// Do the `len` members starting at `nodes[at]` (key, value, key, value, …) repeat a key?
fn has_duplicate_key(nodes: &[simd_json::Node<'_>], mut at: usize, len: usize) -> bool {
    use simd_json::Node;
    const SMALL: usize = 16;
    let mut small = [""; SMALL];
    let mut large: Vec<&str> = Vec::new();
    for n in 0..len {
        let Some(Node::String(k)) = nodes.get(at) else { return false };
        if len <= SMALL {
            if small[..n].contains(k) {
                return true;
            }
            small[n] = k;
        } else {
            large.push(k);
        }
        at += 1 + match nodes.get(at + 1) {
            Some(Node::Array { count, .. } | Node::Object { count, .. }) => 1 + count,
            _ => 1,
        };
    }
    large.sort_unstable();
    large.windows(2).any(|w| w[0] == w[1])
}

/// Parse and classify a JSON-RPC body. simd-json parses in place, so `buf` is modified.
pub fn parse(buf: &mut [u8]) -> Result<Body<'_>, BodyError> {
    let value = read_value(buf)?;
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
            // 2026-07-28
            | "server/discover"
            | "subscriptions/listen"
            | "notifications/subscriptions/acknowledged"
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

    /// The thread's kept parse buffers carry nothing from one body into the next: a large body
    /// with escapes, a failed parse, then small ones read exactly as they are.
    #[test]
    fn each_parse_reads_only_its_own_body() {
        let long = format!("{}\\u0041\\n{}", "x".repeat(KEEP_BUFFERS_FOR), "y".repeat(100));
        let mut b = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"a":"{long}"}}}}"#).into_bytes();
        let v = read_value(&mut b).unwrap();
        let a = v.get("params").and_then(|p| p.get("a")).and_then(|a| a.as_str()).unwrap();
        assert_eq!(a.len(), KEEP_BUFFERS_FOR + 2 + 100);
        assert!(a.contains("xA\ny"));
        let mut bad = br#"{"jsonrpc":"2.0","id":2,"method":"m","params":{"a":"\u00"#.to_vec();
        assert!(read_value(&mut bad).is_err());
        for text in ["short \\u00e9t\\u00e9", "", "plain"] {
            let mut b = format!(r#"{{"jsonrpc":"2.0","id":3,"method":"m","params":{{"a":"{text}"}}}}"#).into_bytes();
            let v = read_value(&mut b).unwrap();
            let want: String = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(v.get("params").and_then(|p| p.get("a")).and_then(|a| a.as_str()), Some(want.as_str()));
        }
    }

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

    fn read(text: &str) -> Result<String, BodyError> {
        let mut b = text.as_bytes().to_vec();
        read_value(&mut b).map(|v| {
            let mut out = Vec::new();
            encode(&[v], false, &mut out);
            String::from_utf8(out).unwrap()
        })
    }

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth_and_however_spelled() {
        for twice in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","name":"delete_everything"}}"#,
            r#"{"a":1,"a":1}"#,
            r#"{"n\u0061me":1,"name":2}"#,
            r#"[0,{"x":[{"k":{"deep":1},"k":[1,2,{"k":3}]}]}]"#,
            r#"{"a":{"b":1},"c":[1,[2]],"d":3,"a":null}"#,
        ] {
            assert!(matches!(read(twice), Err(BodyError::DuplicateMember { .. })), "{twice}");
        }
        // 40 members, the repeat far apart (the sorted path), and one without a repeat.
        let many = |dup: bool| format!("{{{}}}", (0..40).map(|i| format!("\"k{}\":{{\"k{i}\":[{i}]}}", if dup && i == 39 { 3 } else { i })).collect::<Vec<_>>().join(","));
        assert!(matches!(read(&many(true)), Err(BodyError::DuplicateMember { depth: 1 })));
        assert!(read(&many(false)).is_ok());
        // The same name in different objects, or as a value, is fine.
        for once in [r#"{"a":{"a":{"a":"a"}},"b":[{"a":1},{"a":2}]}"#, r#"{"k":"k","v":["k","k"]}"#, "{}", "[]", "\"x\"", r#"{"a":[],"b":{},"c":[[]]}"#] {
            assert_eq!(read(once).map(|v| serde_json::from_str::<serde_json::Value>(&v).unwrap()).unwrap(), serde_json::from_str::<serde_json::Value>(once).unwrap(), "{once}");
        }
        let e = read(r#"{"secret-AKIAQYLPMN5HFIQR7XQB":1,"secret-AKIAQYLPMN5HFIQR7XQB":2}"#).unwrap_err();
        assert!(!e.to_string().contains("AKIA") && e.code() == Code::InvalidRequest, "the error never quotes the name: {e}");
    }

    #[test]
    fn nesting_is_bounded_before_the_value_is_built() {
        let nested = |d: usize| (0..d).fold("1".to_owned(), |s, level| if level % 2 == 0 { format!("[{s}]") } else { format!("{{\"a\":{s}}}") });
        assert!(read(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(read(&nested(MAX_DEPTH + 1)), Err(BodyError::TooDeep));
        // Deep enough to overflow a worker's stack if a value were built from it.
        let mut deep = "[".repeat(1_000_000).into_bytes();
        deep.extend(std::iter::repeat_n(b']', 1_000_000));
        assert_eq!(read_value(&mut deep).map(drop), Err(BodyError::TooDeep));
        // Depth counts open containers only: many siblings are not deep.
        assert!(read(&format!("[{}]", vec!["[[1]]"; 10_000].join(","))).is_ok());
    }
}
