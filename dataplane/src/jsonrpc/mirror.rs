//! The MCP standard headers (2026-07-28, SEP-2243) that repeat what a request's body says, so
//! that load balancers and gateways can route on them without reading bodies: `Mcp-Method`
//! (the method), `Mcp-Name` (`params.name` of `tools/call` and `prompts/get`, `params.uri` of
//! `resources/…`) and `Mcp-Param-<token>` (a `tools/call` argument the tool's input schema
//! marks with `x-mcp-header`). Values that are not plain printable ASCII travel as
//! `=?base64?…?=`.
//!
//! The gateway decides on the body. A header that says something else would let whatever
//! routes on headers behind it act on a call nobody decided, so a mismatch is refused (MCP's
//! `-32020`, as servers answer it) before anything is forwarded. The headers are not inspected
//! on their own — the body holds the same values, inspected with their names as context — and
//! once the hooks have masked the body they are written again from it: an argument masked in
//! the body is masked in its header too (it would otherwise reach the upstream as sent, and a
//! server comparing the two would refuse the call).

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::Body;

/// Arguments nested deeper than this are not searched for a header's value.
const MAX_DEPTH: usize = 16;

/// The part of the body a header repeats, to write it again after the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `params.<key>` (`name` or `uri`).
    Name(&'static str),
    /// A string argument: its path below `params.arguments`.
    Param(Vec<String>),
}

/// A header (by position in the request head) that repeats a string of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub at: usize,
    pub field: Field,
    /// The value as the body held it before the hooks.
    sent: String,
}

/// Is this one of the headers the body decides (never inspected on its own)?
pub fn is_mirror_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("mcp-method") || name.eq_ignore_ascii_case("mcp-name") || param_token(name).is_some()
}

fn param_token(name: &str) -> Option<&str> {
    const PREFIX: &str = "mcp-param-";
    name.get(..PREFIX.len()).filter(|p| p.eq_ignore_ascii_case(PREFIX)).map(|_| &name[PREFIX.len()..])
}

/// Which `params` member `Mcp-Name` repeats for `method`.
fn name_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

/// Check the standard headers of a request (`headers` in head order) against its body.
/// `Ok`: the headers that repeat a string the hooks may mask (to write again after them);
/// `Err`: why the request is refused, without quoting what it carried.
pub fn check<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>, body: &Body<'_>) -> Result<Vec<Mirror>, String> {
    let mut method = None;
    let mut name = None;
    let mut version = None;
    let mut params: Vec<(usize, &str, &[u8])> = Vec::new();
    for (i, (n, v)) in headers.enumerate() {
        let slot = if n.eq_ignore_ascii_case("mcp-method") {
            &mut method
        } else if n.eq_ignore_ascii_case("mcp-name") {
            &mut name
        } else if n.eq_ignore_ascii_case("mcp-protocol-version") {
            &mut version
        } else {
            if let Some(token) = param_token(n) {
                if params.iter().any(|(_, t, _)| t.eq_ignore_ascii_case(token)) {
                    return Err(format!("the {n} header appears more than once; servers differ on which one counts: send it once"));
                }
                params.push((i, token, v));
            }
            continue;
        };
        if slot.replace((i, v)).is_some() {
            return Err(format!("the {n} header appears more than once; servers differ on which one counts: send it once"));
        }
    }
    if method.is_none() && name.is_none() && params.is_empty() {
        return Ok(Vec::new());
    }
    let (msg, info) = match (body.batch, body.values.first(), body.infos.first()) {
        (false, Some(v), Some(i)) => (v, i),
        _ => return Err("Mcp-Method, Mcp-Name and Mcp-Param-* headers describe one message, and this body is a batch: send the messages one per request".into()),
    };
    let body_method = info.method.as_deref().unwrap_or("");
    if let Some((_, m)) = method {
        if m != body_method.as_bytes() {
            return Err(format!("the Mcp-Method header does not match the body's method ({}); the headers must repeat the body: send the same method in both", if body_method.is_empty() { "none: the body is not a request" } else { body_method }));
        }
    }
    let p = msg.get("params");
    if let (Some((_, sent)), Some(meta_version)) = (version, p.and_then(|p| p.get("_meta")).and_then(|m| m.get("io.modelcontextprotocol/protocolVersion")).and_then(|v| v.as_str())) {
        if sent != meta_version.as_bytes() {
            return Err("the MCP-Protocol-Version header and params._meta's io.modelcontextprotocol/protocolVersion differ: send the same version in both".into());
        }
    }
    let mut mirrors = Vec::new();
    if let Some((at, sent)) = name {
        let key = name_key(body_method).ok_or_else(|| format!("the Mcp-Name header names the target of tools/call, prompts/get and resources/… requests, and this message is {}: leave it out", if body_method.is_empty() { "not a request" } else { body_method }))?;
        let held = p.and_then(|p| p.get(key)).and_then(|v| v.as_str());
        match (held, decode(sent)) {
            (Some(held), Some(sent)) if held == sent => mirrors.push(Mirror { at, field: Field::Name(key), sent: sent.to_owned() }),
            (None, _) => return Err(format!("the Mcp-Name header is present but the body has no params.{key}: the headers must repeat the body")),
            (_, None) => return Err(malformed("Mcp-Name")),
            _ => return Err(format!("the Mcp-Name header does not match the body's params.{key}; the headers must repeat the body: send the same value in both")),
        }
    }
    if !params.is_empty() {
        if body_method != "tools/call" {
            return Err("Mcp-Param-* headers repeat the arguments of a tools/call request, and this message is not one: leave them out".into());
        }
        let args = p.and_then(|p| p.get("arguments"));
        for (at, token, raw) in params {
            let header = format!("Mcp-Param-{token}");
            let sent = decode(raw).ok_or_else(|| malformed(&header))?;
            let Some((path, leaf)) = args.and_then(|a| find_argument(a, token, &sent)) else {
                return Err(format!("the {header} header does not match any argument of the call; the headers must repeat the body: send the argument's value in both"));
            };
            if leaf.is_str() {
                mirrors.push(Mirror { at, field: Field::Param(path), sent });
            }
        }
    }
    Ok(mirrors)
}

fn malformed(header: &str) -> String {
    format!("the {header} header's =?base64?…?= value is not canonical base64 of UTF-8 text")
}

/// The argument a `Mcp-Param-<token>` header repeats: a scalar whose header rendering is
/// `sent`, found through objects only (the schema annotates properties, not array items).
/// Of several, the one named like the token, else the first in the body.
fn find_argument<'v, 'a>(args: &'v BorrowedValue<'a>, token: &str, sent: &str) -> Option<(Vec<String>, &'v BorrowedValue<'a>)> {
    let mut found: Option<(Vec<String>, &BorrowedValue<'a>)> = None;
    let mut stack: Vec<(Vec<String>, &BorrowedValue<'a>)> = vec![(Vec::new(), args)];
    while let Some((path, v)) = stack.pop() {
        if let Some(obj) = v.as_object() {
            if path.len() < MAX_DEPTH {
                // Reversed, so that the first member is searched first.
                let mut members: Vec<_> = obj.iter().collect();
                members.reverse();
                for (k, child) in members {
                    let mut p = path.clone();
                    p.push(k.to_string());
                    stack.push((p, child));
                }
            }
            continue;
        }
        if path.is_empty() || !renders_as(v, sent) {
            continue;
        }
        if path.last().is_some_and(|k| k.eq_ignore_ascii_case(token)) {
            return Some((path, v));
        }
        found.get_or_insert((path, v));
    }
    found
}

/// Does `v` travel in a header as `sent`? Strings as they are, booleans as `true`/`false`,
/// numbers by value (`42` and `42.0` are one number).
fn renders_as(v: &BorrowedValue<'_>, sent: &str) -> bool {
    if let Some(s) = v.as_str() {
        return s == sent;
    }
    if let Some(b) = v.as_bool() {
        return sent == if b { "true" } else { "false" };
    }
    if let Some(i) = v.as_i64() {
        return sent.parse::<i64>().ok() == Some(i) || sent.parse::<f64>().ok() == Some(i as f64);
    }
    if let Some(u) = v.as_u64() {
        return sent.parse::<u64>().ok() == Some(u);
    }
    v.as_f64().is_some_and(|f| sent.parse::<f64>().ok() == Some(f))
}

/// The headers to write in place of the ones sent, from the message as the hooks left it:
/// header position → new value, or `None` to leave the header out (its argument is gone).
pub fn rewrite(mirrors: &[Mirror], msg: &BorrowedValue<'_>) -> Vec<(usize, Option<String>)> {
    let p = msg.get("params");
    mirrors
        .iter()
        .filter_map(|m| {
            let now = match &m.field {
                Field::Name(key) => p.and_then(|p| p.get(*key)),
                Field::Param(path) => path.iter().try_fold(p.and_then(|p| p.get("arguments"))?, |v, k| v.get(k.as_str())),
            }
            .and_then(|v| v.as_str());
            match now {
                Some(s) if s == m.sent => None,
                Some(s) => Some((m.at, Some(encode(s)))),
                None => Some((m.at, None)),
            }
        })
        .collect()
}

/// A header value as MCP writes it: as it is when it is printable ASCII without edge spaces
/// (and does not look encoded), else `=?base64?…?=`.
pub fn encode(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b)) && value.trim() == value && !is_sentinel(value.as_bytes());
    if plain {
        return value.to_owned();
    }
    format!("=?base64?{}?=", crate::config::credential::base64(value.as_bytes()))
}

fn is_sentinel(v: &[u8]) -> bool {
    v.len() >= 11 && v.starts_with(b"=?base64?") && v.ends_with(b"?=")
}

/// A header value as the text it stands for; `None` for an encoded one that is not canonical
/// base64 of UTF-8 (it can match nothing), or a plain one that is not UTF-8.
fn decode(raw: &[u8]) -> Option<String> {
    if !is_sentinel(raw) {
        return std::str::from_utf8(raw).ok().map(str::to_owned);
    }
    let b64 = std::str::from_utf8(&raw[9..raw.len() - 2]).ok()?;
    let text = String::from_utf8(crate::detect::decode::base64_bytes(b64)?).ok()?;
    // Canonical: what the text encodes to again (standard alphabet, padded, no stray bits).
    (crate::config::credential::base64(text.as_bytes()) == b64).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(src: &str) -> Body<'static> {
        let bytes: &'static mut [u8] = Box::leak(src.as_bytes().to_vec().into_boxed_slice());
        super::super::parse(bytes).unwrap()
    }

    fn check_with(headers: &[(&'static str, &'static str)], src: &str) -> Result<Vec<Mirror>, String> {
        check(headers.iter().map(|(n, v)| (*n, v.as_bytes())), &body(src))
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send","arguments":{"to":"Jöhn <john@example.org>","opts":{"Region":"eu","n":42,"urgent":true}},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

    #[test]
    fn matching_headers_pass_and_string_arguments_are_kept_for_rewriting() {
        let to = encode("Jöhn <john@example.org>");
        assert!(to.starts_with("=?base64?"), "{to}");
        let to: &'static str = Box::leak(to.into_boxed_str());
        let m = check_with(
            &[("Host", "gw"), ("Mcp-Method", "tools/call"), ("mcp-name", "send"), ("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Param-To", to), ("Mcp-Param-Region", "eu"), ("Mcp-Param-N", "42"), ("Mcp-Param-Urgent", "true")],
            CALL,
        )
        .unwrap();
        let fields: Vec<_> = m.iter().map(|m| (m.at, m.field.clone())).collect();
        assert_eq!(fields, vec![(2, Field::Name("name")), (4, Field::Param(vec!["to".into()])), (5, Field::Param(vec!["opts".into(), "Region".into()]))]);
        assert_eq!(check_with(&[("Mcp-Param-N", "42.0")], CALL).map(|m| m.len()), Ok(0), "numbers compare by value and are never rewritten");
    }

    #[test]
    fn mismatches_duplicates_and_strays_are_refused_without_quoting_values() {
        let secret = "AKIAQYLPMN5HFIQR7XQB";
        for (headers, why) in [
            (vec![("Mcp-Method", "tools/list")], "Mcp-Method header does not match"),
            (vec![("Mcp-Name", "delete_everything")], "Mcp-Name header does not match"),
            (vec![("Mcp-Method", "tools/call"), ("mcp-method", "tools/call")], "appears more than once"),
            (vec![("Mcp-Param-To", secret)], "does not match any argument"),
            (vec![("Mcp-Param-To", "=?base64?Sm9obg=?=")], "not canonical base64"),
            (vec![("Mcp-Param-To", "=?base64?SmöobgA=?=")], "not canonical base64"),
            (vec![("Mcp-Param-Region", "eu"), ("MCP-PARAM-REGION", "eu")], "appears more than once"),
            (vec![("MCP-Protocol-Version", "2025-11-25"), ("Mcp-Method", "tools/call")], "differ"),
        ] {
            let e = check_with(&headers, CALL).unwrap_err();
            assert!(e.contains(why), "{headers:?}: {e}");
            assert!(!e.contains(secret), "{e}");
        }
        let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#;
        assert!(check_with(&[("Mcp-Name", "x")], list).unwrap_err().contains("leave it out"));
        assert!(check_with(&[("Mcp-Param-X", "x")], list).unwrap_err().contains("not one"));
        let batch = r#"[{"jsonrpc":"2.0","id":2,"method":"tools/list"},{"jsonrpc":"2.0","id":3,"method":"tools/list"}]"#;
        assert!(check_with(&[("Mcp-Method", "tools/list")], batch).unwrap_err().contains("batch"));
        let answer = r#"{"jsonrpc":"2.0","id":2,"result":{}}"#;
        assert!(check_with(&[("Mcp-Method", "tools/list")], answer).unwrap_err().contains("not a request"));
        // Without standard headers nothing is asked of the body (2025 clients send none).
        assert_eq!(check_with(&[("MCP-Protocol-Version", "2025-11-25")], batch), Ok(Vec::new()));
    }

    #[test]
    fn headers_are_written_again_from_the_masked_body() {
        let to: &'static str = Box::leak(encode("Jöhn <john@example.org>").into_boxed_str());
        let mirrors = check_with(&[("Mcp-Name", "send"), ("Mcp-Param-To", to), ("Mcp-Param-Region", "eu")], CALL).unwrap();
        // Unchanged body: nothing to write.
        assert!(rewrite(&mirrors, &body(CALL).values[0]).is_empty());
        let masked = CALL.replace("Jöhn <john@example.org>", "Jöhn <[email:1f2e]>").replace(r#""Region""#, r#""[REDACTED:x]""#);
        let edits = rewrite(&mirrors, &body(&masked).values[0]);
        assert_eq!(edits, vec![(1, Some(encode("Jöhn <[email:1f2e]>"))), (2, None)], "masked → its new value; a renamed argument's header is left out");
        assert_eq!(decode(edits[0].1.as_deref().unwrap().as_bytes()).as_deref(), Some("Jöhn <[email:1f2e]>"));
    }

    #[test]
    fn values_travel_as_mcp_writes_them() {
        for v in ["plain", "with space inside", "", "=?base64?eA==?=", " edge", "tab\t", "ünï", "line\nbreak", "😀"] {
            let e = encode(v);
            assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)), "{e:?}");
            assert_eq!(decode(e.as_bytes()).as_deref(), Some(v), "{v:?} → {e:?}");
        }
        assert_eq!(encode("eu-west-1"), "eu-west-1");
        assert_eq!(encode("ü"), "=?base64?w7w=?=");
        assert!(is_mirror_header("MCP-PARAM-x") && is_mirror_header("mcp-name") && !is_mirror_header("mcp-protocol-version") && !is_mirror_header("mcp-session-id"));
    }

    proptest::proptest! {
        /// Whatever text an argument holds (control characters, CR/LF, non-ASCII, what looks
        /// encoded), what the gateway writes in a header is one line of visible ASCII that
        /// stands for exactly that text: no header can be split or smuggled through a rewrite.
        #[test]
        fn a_rewritten_header_is_one_safe_line_standing_for_the_value(v in "\\PC*|[\\x00-\\x7f]{0,40}|=\\?base64\\?[A-Za-z0-9+/=]{0,12}\\?=") {
            let e = encode(&v);
            proptest::prop_assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)), "{:?}", e);
            proptest::prop_assert_eq!(decode(e.as_bytes()), Some(v));
        }

        /// Any header value against any call: a verdict, never a panic; and a value accepted as
        /// an argument's is that argument's.
        #[test]
        fn any_header_value_gets_a_verdict(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..40), arg in "\\PC{0,12}") {
            let src = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {"x": arg}}}).to_string();
            let raw: &'static [u8] = Box::leak(raw.into_boxed_slice());
            if let Ok(m) = check([("Mcp-Param-X", raw)].into_iter(), &body(&src)) {
                if let Some(m) = m.first() {
                    proptest::prop_assert_eq!(&m.sent, &arg);
                }
            }
        }
    }
}
