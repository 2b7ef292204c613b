//! Sluice dataplane: a thread-per-core MCP/HTTP gateway that understands every message.
//!
//! ```text
//!  agent ──HTTP/1.1 (TLS)──▶ runtime: one glommio executor per core, SO_REUSEPORT listener each
//!                            proxy::conn     accept, TLS, keep-alive, head/body with limits
//!                            http, sse       sans-io codecs: heads, framing, chunked, SSE events
//!                            proxy::exchange route → jsonrpc parse → hooks → upstream → response:
//!                                            SSE event by event | JSON buffered | plain streamed
//!                            jsonrpc         classify each message, build error bodies
//!                            hooks           where identity/policy/detection/recording plug in
//!                            session         MCP session records, sharded, reachable from all cores
//!                            proxy::upstream per-core pools, TLS origination
//!  admin (own thread) ◀──── metrics, session, runtime state
//! ```
//!
//! The binary `sluice` (`main.rs`) turns the command line into a [`config::Config`] and hands
//! it to [`runtime::run`]. Modules are declared in the order a request meets them.

pub mod admin;
pub mod config;
pub mod cpus;
pub mod detect;
pub mod error;
pub mod events;
pub mod hooks;
pub mod http;
pub mod identity;
pub mod ids;
pub mod jsonrpc;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod offload;
pub mod policy;
pub mod approvals;
pub mod proxy;
pub mod runtime;
pub mod scrub;
pub mod pins;
pub mod session;
pub mod sse;
pub mod stdio;
pub mod tls;
pub mod token_exchange;

/// Helpers for unit tests that stand up a real socket.
#[cfg(test)]
pub(crate) mod test_http {
    use std::io::BufRead;

    /// Read one HTTP/1.1 request's head and `Content-Length` body from `r`; the body.
    pub fn request_body(r: &mut impl BufRead) -> String {
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}
