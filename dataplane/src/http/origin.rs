//! The `Origin` check the MCP transports require ("servers MUST validate the Origin header …
//! if it is present and invalid, servers MUST respond with HTTP 403"): a web page that
//! DNS-rebinds its own name to the gateway's address, or simply posts to it cross-site, would
//! otherwise drive tool calls — and upstream credentials the gateway injects — from a
//! visitor's browser.
//!
//! A request without `Origin` passes (agents, SDKs and scripts do not send one; browsers
//! always do on such requests). One from a loopback origin (`localhost`, `*.localhost`,
//! `127.0.0.0/8`, `[::1]`: a page on the same machine, e.g. a local inspector) passes, as does
//! one listed in `gateway.allowed_origins`.
//!
//! Browsers send no `Origin` on a same-origin `GET` or `HEAD`, and after rebinding the page *is*
//! same-origin with the gateway: it could read plain HTTP routes (answered with the credentials
//! the gateway injects upstream) unseen by the check above. What such a request cannot hide is
//! the name the page was loaded under, in `Host`. So the `Host` check ([`Hosts`]): an IP
//! address (no page can rebind a name it does not have) or a loopback name (`localhost`,
//! `*.localhost`, which browsers never resolve through DNS) passes, as does a name listed in
//! `gateway.allowed_hosts` or one a route matches by; any other name is refused 421 before the
//! body is read. An HTTP/1.1 request without exactly one well-formed `Host` is refused 400
//! (RFC 9112 §3.2).

use super::Head;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One origin, normalised: scheme and host lower-case, the port always explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parse `scheme://host[:port]` (http or https; no user, path, query or fragment).
    pub fn parse(s: &str) -> Result<Origin, String> {
        let bad = |why: &str| Err(format!("\"{s}\" is not an origin ({why}); write scheme://host[:port], e.g. \"https://chat.example.com\""));
        let Some((scheme, rest)) = s.split_once("://") else { return bad("no scheme") };
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return bad("the scheme must be http or https"),
        };
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("only a host and an optional port may follow the scheme");
        }
        let Some((host, port)) = split_authority(rest) else { return bad("only a host and an optional port may follow the scheme") };
        let port = match port {
            None => default,
            Some(p) => match parse_port(p) {
                Some(n) => n,
                None => return bad("the port is not a number from 1 to 65535"),
            },
        };
        if host.is_empty() || host == "[]" {
            return bad("no host");
        }
        Ok(Origin { scheme, host: host.to_ascii_lowercase(), port })
    }

    fn is_loopback(&self) -> bool {
        let h = self.host.as_str();
        h == "localhost" || h.ends_with(".localhost") || h == "[::1]" || h.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
    }
}

/// The origins a deployment lets call it, besides loopback ones.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub allowed: Vec<Origin>,
}

impl Origins {
    /// May a request with this `Origin` header value go on? (`null`, an opaque origin — a
    /// sandboxed frame, a `file:` page — and anything unparsable are refused.)
    pub fn allows(&self, header: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(header) else { return false };
        match Origin::parse(text.trim()) {
            Ok(o) => o.is_loopback() || self.allowed.contains(&o),
            Err(_) => false,
        }
    }
}

/// What is wrong with a request's `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRefusal {
    /// HTTP/1.1 without `Host`, or more than one: 400.
    NotOne,
    /// Not `host[:port]`: 400.
    Malformed,
    /// A name the deployment did not say is the gateway's: 421. Holds the name as sent.
    Unlisted(String),
}

/// One `gateway.allowed_hosts` entry: `name`, `name:port`, `*.suffix[:port]`, or `*` (any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case, without a trailing dot; for `*.suffix`, the suffix with its leading dot.
    name: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        if s == "*" {
            return Ok(HostPattern { name: String::new(), wildcard: true, port: None });
        }
        let bad = |why: &str| format!("\"{s}\" is not a host name ({why}); write name, name:port or *.domain, e.g. \"sluice.corp.example\", or \"*\" to accept any");
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (name, port) = split_authority(rest).ok_or_else(|| bad("only a name and an optional port; no scheme or path"))?;
        if name.starts_with('[') || name.parse::<Ipv4Addr>().is_ok() {
            return Err(bad("IP addresses always pass and need no entry"));
        }
        if !is_reg_name(name) {
            return Err(bad("letters, digits, '-', '_' and '.' only"));
        }
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or_else(|| bad("the port is not a number from 1 to 65535"))?),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        Ok(HostPattern { name: if wildcard { format!(".{name}") } else { name }, wildcard, port })
    }

    fn matches(&self, name: &str, port: Option<u16>) -> bool {
        if self.wildcard && self.name.is_empty() {
            return true;
        }
        let name_ok = if self.wildcard { name.len() > self.name.len() && name.ends_with(self.name.as_str()) } else { name == self.name };
        name_ok && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// The names the gateway answers to, besides IP addresses and loopback names.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    pub allowed: Vec<HostPattern>,
}

impl Hosts {
    /// Is this request's `Host` acceptable? HTTP/1.0 may omit it (no browser does).
    pub fn check(&self, head: &Head) -> Result<(), HostRefusal> {
        let value = match (head.header_count("host"), head.header("host")) {
            (0, _) if head.minor_version == 0 => return Ok(()),
            (1, Some(v)) => v,
            _ => return Err(HostRefusal::NotOne),
        };
        let text = std::str::from_utf8(value).map_err(|_| HostRefusal::Malformed)?.trim_matches([' ', '\t']);
        let (name, port) = split_authority(text).ok_or(HostRefusal::Malformed)?;
        let port = match port {
            None | Some("") => None,
            Some(p) => Some(parse_port(p).ok_or(HostRefusal::Malformed)?),
        };
        if let Some(v6) = name.strip_prefix('[') {
            return v6.strip_suffix(']').and_then(|a| a.parse::<Ipv6Addr>().ok()).map(drop).ok_or(HostRefusal::Malformed);
        }
        if !is_reg_name(name) {
            return Err(HostRefusal::Malformed);
        }
        if name.parse::<Ipv4Addr>().is_ok() {
            return Ok(());
        }
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") || self.allowed.iter().any(|p| p.matches(&lower, port)) {
            return Ok(());
        }
        Err(HostRefusal::Unlisted(text.to_owned()))
    }
}

impl From<HostRefusal> for crate::error::ProxyError {
    fn from(r: HostRefusal) -> Self {
        use crate::error::ProxyError;
        match r {
            HostRefusal::NotOne => ProxyError::BadHost("an HTTP/1.1 request needs exactly one Host header"),
            HostRefusal::Malformed => ProxyError::BadHost("the Host header is not host[:port]"),
            HostRefusal::Unlisted(h) => ProxyError::MisdirectedHost(h),
        }
    }
}

/// `name[:port]` or `[v6][:port]` → (name, port text); `None` for anything with a scheme,
/// user, path or whitespace.
fn split_authority(s: &str) -> Option<(&str, Option<&str>)> {
    if s.is_empty() || s.contains(['/', '?', '#', '@', ' ', '\t', ',']) {
        return None;
    }
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (name, rest) = s.split_at(end + 1);
        return match rest {
            "" => Some((name, None)),
            r => r.strip_prefix(':').map(|p| (name, Some(p))),
        };
    }
    match s.split_once(':') {
        Some((n, p)) if !n.is_empty() && !p.contains(':') => Some((n, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

fn is_reg_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_port(p: &str) -> Option<u16> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Origins {
        Origins { allowed: list.iter().map(|o| Origin::parse(o).unwrap()).collect() }
    }

    #[test]
    fn loopback_and_listed_origins_pass_others_do_not() {
        let o = origins(&["https://chat.example.com", "http://[2001:db8::7]:8080"]);
        for ok in [
            "http://localhost",
            "http://localhost:6274",
            "http://app.localhost:3000",
            "http://127.0.0.1:8080",
            "http://127.8.9.10",
            "http://[::1]:9",
            "https://chat.example.com",
            "HTTPS://Chat.Example.COM:443",
            "http://[2001:DB8::7]:8080",
        ] {
            assert!(o.allows(ok.as_bytes()), "{ok} should pass");
        }
        for no in [
            "http://evil.example.com",
            "http://chat.example.com",       // another scheme is another origin
            "https://chat.example.com:8443", // and another port
            "https://chat.example.com.evil.net",
            "http://localhost.evil.net",
            "http://128.0.0.1",
            "http://[::2]",
            "http://0.0.0.0",
            "null",
            "file://",
            "https://chat.example.com/path",
            "https://user@chat.example.com",
            "",
            "http://",
            "http://[::1",
            "http://localhost:0",
            "http://localhost:+80",
            "http://localhost:99999",
        ] {
            assert!(!o.allows(no.as_bytes()), "{no:?} should be refused");
        }
        assert!(!o.allows(b"http://\xffocalhost"), "not UTF-8");
    }

    #[test]
    fn config_values_are_checked() {
        assert_eq!(Origin::parse("https://a.example").unwrap(), Origin::parse("https://A.example:443").unwrap());
        for bad in ["a.example", "ftp://a.example", "https://a.example/", "https://a.example:x", "*"] {
            let e = Origin::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("scheme://host[:port]"), "{e}");
        }
    }

    fn host_check(hosts: &Hosts, head: &str) -> Result<(), HostRefusal> {
        let raw = format!("{head}\r\n\r\n");
        let mut h = Head::default();
        h.parse_request(raw.as_bytes(), crate::http::Limits { max_head_bytes: 8192 }).unwrap().unwrap();
        hosts.check(&h)
    }

    fn with_host(hosts: &Hosts, host: &str) -> Result<(), HostRefusal> {
        host_check(hosts, &format!("GET /api/x HTTP/1.1\r\nHost: {host}"))
    }

    #[test]
    fn addresses_loopback_names_and_listed_names_pass_other_names_do_not() {
        let hosts = Hosts { allowed: ["sluice.corp.example", "agents.example:8443", "*.gw.example"].iter().map(|p| HostPattern::parse(p).unwrap()).collect() };
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:9",
            "[2001:db8::7]",
            "localhost",
            "LocalHost:6274",
            "app.localhost:3000",
            "localhost.",
            "sluice.corp.example",
            "Sluice.Corp.Example:443",
            "sluice.corp.example.:80",
            "agents.example:8443",
            "eu.gw.example:1",
            "a.b.gw.example",
            "127.0.0.1:",
        ] {
            assert_eq!(with_host(&hosts, ok), Ok(()), "{ok} should pass");
        }
        for (name, no) in [
            ("rebind.attacker.example", "rebind.attacker.example:8080"),
            ("another port", "agents.example:8080"),
            ("no port is not the listed port", "agents.example"),
            ("the wildcard's own name", "gw.example"),
            ("a lookalike suffix", "evilgw.example"),
            ("a suffix of a listed name", "corp.example"),
            ("localhost as a label", "localhost.attacker.example"),
            ("not dotted-quad, so a name", "127.1"),
            ("a single label", "x"),
        ] {
            assert!(matches!(with_host(&hosts, no), Err(HostRefusal::Unlisted(ref h)) if h == no), "{name}: {no}");
        }
        for bad in ["", "a b", "user@127.0.0.1", "127.0.0.1/x", "[::1", "[zz::1]", "a.example:x", "a.example:0", "a.example:+80", "a.example:99999", "::1", "a,b", "\u{e9}.example"] {
            assert_eq!(with_host(&hosts, bad), Err(HostRefusal::Malformed), "{bad:?}");
        }
        assert_eq!(host_check(&hosts, "GET / HTTP/1.1\r\nAccept: */*"), Err(HostRefusal::NotOne), "HTTP/1.1 needs Host");
        assert_eq!(host_check(&hosts, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1"), Err(HostRefusal::NotOne));
        assert_eq!(host_check(&hosts, "GET / HTTP/1.0\r\nAccept: */*"), Ok(()), "HTTP/1.0 may omit it");
        let any = Hosts { allowed: vec![HostPattern::parse("*").unwrap()] };
        assert_eq!(with_host(&any, "rebind.attacker.example"), Ok(()));
        assert_eq!(with_host(&any, "a b"), Err(HostRefusal::Malformed), "\"*\" accepts any name, not any bytes");
    }

    #[test]
    fn host_patterns_are_checked() {
        for bad in ["https://a.example", "a.example/", "*.", "*x.example", "a.example:", "a.example:x", "127.0.0.1", "[::1]", "a example", ""] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(e.contains(&format!("\"{bad}\"")) && e.contains("name:port"), "{e}");
        }
        assert_eq!(HostPattern::parse("A.Example.").unwrap(), HostPattern::parse("a.example").unwrap());
    }
}
