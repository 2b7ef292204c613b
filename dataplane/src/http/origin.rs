//! The `Origin` check the MCP transports require ("servers MUST validate the Origin header …
//! if it is present and invalid, servers MUST respond with HTTP 403"): a web page that
//! DNS-rebinds its own name to the gateway's address, or simply posts to it cross-site, would
//! otherwise drive tool calls — and upstream credentials the gateway injects — from a
//! visitor's browser.
//!
//! A request without `Origin` passes (agents, SDKs and scripts do not send one; browsers
//! always do on such requests). One from a loopback origin (`localhost`, `*.localhost`,
//! `127.0.0.0/8`, `[::1]`: a page on the same machine, e.g. a local inspector) passes, as does
//! one listed in `gateway.allowed_origins`. The request's `Host` is not consulted: a
//! rebinding page makes it agree with its `Origin`.

use std::net::Ipv4Addr;

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
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("only a host and an optional port may follow the scheme");
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((addr, "")) => (format!("[{addr}]"), None),
                Some((addr, p)) if p.starts_with(':') => (format!("[{addr}]"), Some(&p[1..])),
                _ => return bad("unclosed IPv6 bracket"),
            },
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            },
        };
        let port = match port {
            None => default,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('+') => n,
                _ => return bad("the port is not a number from 1 to 65535"),
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
}
