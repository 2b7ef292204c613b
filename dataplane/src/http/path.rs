//! The request path in one canonical form, so that routing, policy (`http.path`), detection
//! and the record see the path the upstream acts on — and the upstream is sent that path.
//!
//! Otherwise a policy that allows `GET` under `/api/reports` also allows
//! `/api/reports/../users`, `/api/reports/%2e%2e/users` or, for a Tomcat upstream,
//! `/api/reports/..;/users`: the gateway would decide on one path and the upstream serve
//! another. Same for a route's `upstream_path` (`/api/../x` would leave the upstream base).
//!
//! Canonical: percent-escapes of unreserved characters decoded (`%2e` is `.`, `%41` is `A`;
//! RFC 3986 §6.2.2.2), other escapes upper-case; dot segments removed (§5.2.4; `..` above the
//! root is dropped, as there); empty segments merged (`//admin` is `/admin`, as many servers
//! read it). Refused (400): a `%` without two hex digits, escaped control characters, a raw
//! `\` (some servers read it as `/`), and dot segments with parameters (`..;x`). Escaped
//! separators (`%2F`, `%5C`) are kept as they are — they are not split on — and refused unless
//! the route allows them ([`has_encoded_separator`]), since an upstream that decodes them
//! before splitting would read another path. The query is left alone.
//!
//! A target in absolute form (`GET http://host/admin HTTP/1.1`, which servers must accept) is
//! brought to origin form ([`origin_form`]) first — else the policy would read
//! `http://host/admin` where the upstream serves `/admin` — provided it names the host the
//! `Host` header names (a request naming two hosts is read differently by different servers).
//! Any other target (`*`, `ftp://…`, not UTF-8) is refused.

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    BadEscape,
    Control,
    Backslash,
    DotParameter,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::BadEscape => "the request path has a '%' that is not followed by two hex digits; escape a literal '%' as %25",
            PathError::Control => "the request path encodes a control character (%00-%1F or %7F)",
            PathError::Backslash => "the request path holds a '\\', which servers read differently (some as '/'); send '/' or escape it as %5C",
            PathError::DotParameter => "the request path has a dot segment with parameters ('..;' or '.;'), which some servers read as '..'",
        }
    }
}

/// Why a target is not a path the gateway can route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Neither a path nor an http(s) URL.
    NotAPath,
    /// An absolute-form target naming another host than `Host`.
    TwoHosts,
}

impl TargetError {
    pub fn reason(&self) -> &'static str {
        match self {
            TargetError::NotAPath => "the request target must be a path (\"/mcp\") or an http(s) URL",
            TargetError::TwoHosts => "the request target is a URL naming another host than the Host header; send the path alone",
        }
    }
}

/// An absolute-form target (`http://host[:port]/path?query`) as its origin form (`/path?query`,
/// `/` when it has no path); `Ok(None)` for a target that is a path already.
pub fn origin_form(target: &str, host: Option<&[u8]>) -> Result<Option<String>, TargetError> {
    if target.starts_with('/') {
        return Ok(None);
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(TargetError::NotAPath);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = host.map(super::trim_ascii).unwrap_or_default();
    if authority.is_empty() || !authority.as_bytes().eq_ignore_ascii_case(host) {
        return Err(TargetError::TwoHosts);
    }
    Ok(Some(if path.starts_with('/') { path.to_owned() } else { format!("/{path}") }))
}

/// The canonical form of an origin-form request target (path and query); `Ok(None)` when it is
/// canonical already, which needs no allocation.
pub fn canonical(target: &str) -> Result<Option<String>, PathError> {
    if !target.starts_with('/') {
        return Ok(None);
    }
    let (path, query) = match target.find('?') {
        Some(q) => target.split_at(q),
        None => (target, ""),
    };
    let b = path.as_bytes();
    let suspect = b.iter().any(|&c| c == b'%' || c == b'\\') || b.windows(2).any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'));
    if !suspect {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut ends_in_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "" | "." => ends_in_slash = last,
            ".." => {
                kept.pop();
                ends_in_slash = last;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => return Err(PathError::DotParameter),
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(target.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if kept.is_empty() || ends_in_slash {
        out.push('/');
    }
    out.push_str(query);
    Ok((out != target).then_some(out))
}

/// Does a canonical path hold an escaped `/` or `\`?
pub fn has_encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| w[0] == b'%' && matches!((w[1], w[2]), (b'2', b'F') | (b'5', b'C')))
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) else {
                    return Err(PathError::BadEscape);
                };
                let c = h << 4 | l;
                if c < 0x20 || c == 0x7f {
                    return Err(PathError::Control);
                }
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
            }
            _ => {
                // Copy up to the next byte of interest whole (keeps UTF-8 intact).
                let next = b[i..].iter().position(|&c| c == b'%' || c == b'\\').map_or(b.len(), |p| i + p);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(out)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(t: &str) -> String {
        canonical(t).unwrap().unwrap_or_else(|| t.to_owned())
    }

    #[test]
    fn paths_become_what_the_upstream_would_read() {
        for (sent, read) in [
            ("/api/reports/q3", "/api/reports/q3"),
            ("/api/reports/../users", "/api/users"),
            ("/api/reports/%2e%2e/users", "/api/users"),
            ("/api/reports/%2E%2E/users?x=/../y", "/api/users?x=/../y"),
            ("/api/reports/.%2e/users", "/api/users"),
            ("/api/./reports/./q3", "/api/reports/q3"),
            ("//admin", "/admin"),
            ("/api//reports///q3/", "/api/reports/q3/"),
            ("/api/reports/..", "/api/"),
            ("/api/reports/.", "/api/reports/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/..", "/"),
            ("/", "/"),
            ("/%61pi/%7Euser", "/api/~user"),
            ("/api/bob%40example.com", "/api/bob%40example.com"),
            ("/api/bob%40example.com/%3f", "/api/bob%40example.com/%3F"),
            ("/files/a%2Fb/../c", "/files/c"),
            ("/files/a%2fb", "/files/a%2Fb"),
            ("/files/..%2F..%2Fetc", "/files/..%2F..%2Fetc"),
            ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource/mcp"),
            ("/caf\u{e9}/../x", "/x"),
            ("/mcp?sessionId=a//b", "/mcp?sessionId=a//b"),
        ] {
            assert_eq!(canon(sent), read, "{sent}");
        }
        assert_eq!(canonical("/api/reports/q3?x=..").unwrap(), None, "canonical already: no allocation");
        assert!(has_encoded_separator("/files/a%2Fb") && has_encoded_separator("/a%5Cb") && !has_encoded_separator("/a%25b"));
        assert!(has_encoded_separator(&canon("/files/a%2fb")), "lower-case escapes are upper-cased first");
    }

    #[test]
    fn paths_servers_read_differently_are_refused() {
        for (sent, why) in [
            ("/api/%zz", PathError::BadEscape),
            ("/api/%2", PathError::BadEscape),
            ("/api/%", PathError::BadEscape),
            ("/api/%00/x", PathError::Control),
            ("/api/%0a", PathError::Control),
            ("/api/%7f", PathError::Control),
            ("/api\\..\\users", PathError::Backslash),
            ("/api/reports/..;/users", PathError::DotParameter),
            ("/api/reports/.;x/users", PathError::DotParameter),
            ("/api/reports/%2e%2e;/users", PathError::DotParameter),
        ] {
            assert_eq!(canonical(sent), Err(why), "{sent}");
        }
        assert_eq!(canon("/api/a..;b"), "/api/a..;b", "only a dot segment with parameters");
        assert_eq!(canon("/api/x;v=1"), "/api/x;v=1");
    }

    #[test]
    fn absolute_form_targets_become_paths_of_the_host_they_name() {
        let host = Some(&b"gw.example:8080"[..]);
        assert_eq!(origin_form("/mcp", host), Ok(None));
        assert_eq!(origin_form("http://gw.example:8080/admin/../x?q=1", host).unwrap().as_deref(), Some("/admin/../x?q=1"));
        assert_eq!(origin_form("HTTPS://GW.example:8080", host).unwrap().as_deref(), Some("/"));
        assert_eq!(origin_form("http://gw.example:8080?q", host).unwrap().as_deref(), Some("/?q"));
        for (target, h) in [("http://other.example/admin", host), ("http://gw.example/admin", host), ("http:///admin", host), ("http://gw.example:8080/", None)] {
            assert_eq!(origin_form(target, h), Err(TargetError::TwoHosts), "{target}");
        }
        for target in ["*", "", "ftp://gw.example:8080/x", "admin", "http:/x"] {
            assert_eq!(origin_form(target, host), Err(TargetError::NotAPath), "{target}");
        }
    }

    proptest! {
        /// Canonical is a fixed point, never holds a dot or empty segment, and decodes no
        /// escape it should keep.
        #[test]
        fn canonical_paths_are_stable(parts in proptest::collection::vec(prop_oneof![
            Just("".to_owned()), Just(".".to_owned()), Just("..".to_owned()), Just("%2e".to_owned()), Just("%2E%2e".to_owned()),
            Just("%2F".to_owned()), Just("%41".to_owned()), Just("a;b".to_owned()), "[a-z~_-]{1,4}", Just("%e2%82%ac".to_owned()),
        ], 0..10), query in proptest::option::of("[a-z/.=]{0,6}")) {
            let t = format!("/{}{}", parts.join("/"), query.map(|q| format!("?{q}")).unwrap_or_default());
            let c = canon(&t);
            prop_assert_eq!(canonical(&c).unwrap(), None, "{} -> {}", t, c);
            let path = c.split('?').next().unwrap();
            prop_assert!(path.starts_with('/'));
            for seg in path.split('/').skip(1).collect::<Vec<_>>().iter().rev().skip(1) {
                prop_assert!(!seg.is_empty() && *seg != "." && *seg != "..", "{} -> {}", t, c);
            }
            prop_assert!(c.matches("%2F").count() <= t.matches("%2F").count(), "an escaped slash is never made: {} -> {}", t, c);
            prop_assert!(!c.contains("%2E") && !c.contains("%41") && !path.contains("%e2"));
        }
    }
}
