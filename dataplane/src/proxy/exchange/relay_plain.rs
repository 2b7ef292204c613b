//! A body the gateway does not parse as JSON, streamed through re-framed: text scanned and masked
//! as it streams, an echoed upstream credential scrubbed.

use super::Track;
use super::answer_head::response_head;
use super::body::BodyReader;
use super::media::{Media, media};
use crate::proxy::Worker;
use crate::proxy::io::{deadline, Stream};
use crate::proxy::upstream::UpConn;
use crate::config::Config;
use crate::config::detect::{Action, DetectCfg};
use crate::hooks::{Direction, RequestCtx};
use crate::http::body::BodyKind;
use crate::http::write;
use futures_lite::AsyncWriteExt;

/// Stream a body the gateway does not inspect, re-framed for the agent.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_plain(
    w: &Worker,
    cfg: &Config,
    ctx: &mut RequestCtx,
    down: &mut Stream,
    c: &mut UpConn,
    kind: BodyKind,
    method: &str,
    keep_alive: bool,
    client_minor: u8,
    sent: &mut u64,
    mcp: bool,
    track: &Track<'_>,
    idle: std::time::Duration,
) -> Result<bool, ()> {
    // Text bodies are scanned and masked as they stream (the length may change, so they go
    // out chunked, or close-delimited to an HTTP/1.0 client).
    let ctype = c.head.header("content-type");
    let text = media(ctype) == Media::Text || (mcp && ctype.is_none());
    let detect = cfg.detect.as_ref().filter(|d| text && kind != BodyKind::None && d.active(Direction::Response));
    // An upstream's injected credential echoed in a text answer is replaced as it streams.
    let mut cred = ctx.upstream_credential().filter(|_| text && kind != BodyKind::None).map(|c| crate::scrub::StreamScrub::new(&c.secrets));
    let mut clean = Vec::new();
    let kind_out = if (detect.is_some() || cred.is_some()) && matches!(kind, BodyKind::Length(_)) { BodyKind::CloseDelimited } else { kind };
    let chunked_out = matches!(kind_out, BodyKind::Chunked | BodyKind::CloseDelimited) && client_minor >= 1;
    let mut scan = match detect {
        Some(d) => match (w.take_scanner(&d.engine), crate::detect::stream::StreamScanner::new(&d.engine)) {
            (Ok(sc), Ok(st)) => Some((d, sc, st)),
            _ => {
                tracing::error!(worker = w.id, "detect: cannot set up a streamed scan; refusing the body");
                return Err(());
            }
        },
        None => None,
    };
    // How findings are masked (block acts as mask once the head is out), for every piece.
    let mask_rule = |r: u32| detect.is_some_and(|d| matches!(d.action(Direction::Response, r), Action::Mask | Action::Block));
    let plan = detect.map(|d| crate::detect::mask::Plan { masker: &d.masker, strategies: &d.strategies, mask_rule: &mask_rule });
    let mut masked = Vec::new();
    let (mut found, mut fingerprints) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(1024);
    response_head(w, &mut out, &c.head, ctx, track);
    match kind_out {
        BodyKind::Length(n) => {
            let _ = std::io::Write::write_fmt(&mut out, format_args!("content-length: {n}\r\n"));
        }
        BodyKind::None => {
            if method == "HEAD" {
                if let Some(cl) = c.head.header("content-length") {
                    write::header(&mut out, "content-length", cl);
                }
            } else if !matches!(c.head.status, 100..=199 | 204 | 304) {
                write::content_length(&mut out, 0);
            }
        }
        _ if chunked_out => write::header(&mut out, "transfer-encoding", b"chunked"),
        _ => {}
    }
    let keep = keep_alive && (chunked_out || !matches!(kind_out, BodyKind::CloseDelimited));
    write::header(&mut out, "connection", if keep { b"keep-alive" } else { b"close" });
    out.extend_from_slice(b"\r\n");
    let mut reader = BodyReader::new(kind);
    loop {
        match scan.as_mut() {
            None => reader
                .drain(&mut c.rbuf, |b| {
                    let b = match cred.as_mut() {
                        Some(s) => {
                            clean.clear();
                            s.feed(b, &mut clean);
                            &clean[..]
                        }
                        None => b,
                    };
                    *sent += b.len() as u64;
                    if chunked_out {
                        write::chunk(&mut out, b)
                    } else {
                        out.extend_from_slice(b)
                    }
                })
                .map_err(|e| tracing::warn!(worker = w.id, error = %e, "upstream body framing"))?,
            Some((_, sc, st)) => {
                reader
                    .drain(&mut c.rbuf, |b| match cred.as_mut() {
                        Some(s) => {
                            clean.clear();
                            s.feed(b, &mut clean);
                            st.feed(sc, plan, &clean, &mut masked, &mut found)
                        }
                        None => st.feed(sc, plan, b, &mut masked, &mut found),
                    })
                    .map_err(|e| tracing::warn!(worker = w.id, error = %e, "upstream body framing"))?;
            }
        }
        // At the end, what the credential scrub held back goes on (to detection, or out).
        if let Some(mut s) = cred.take_if(|_| reader.done) {
            clean.clear();
            s.finish(&mut clean);
            if s.replaced {
                tracing::warn!(upstream = %ctx.upstream, "the upstream echoed its injected credential in a text answer; scrubbed");
            }
            match scan.as_mut() {
                Some((_, sc, st)) => st.feed(sc, plan, &clean, &mut masked, &mut found),
                None => masked.extend_from_slice(&clean),
            }
        }
        if let Some((_, _, st)) = scan.as_mut() {
            st.take_fingerprints(&mut fingerprints);
        }
        if let Some((d, mut sc, st)) = scan.take_if(|_| reader.done) {
            fingerprints.extend(st.finish(&mut sc, plan, &mut masked, &mut found));
            w.return_scanner(&d.engine, sc);
            log_stream_findings(w, ctx, d, &mut found, &mut fingerprints);
        } else if let Some((d, _, _)) = scan.as_ref() {
            log_stream_findings(w, ctx, d, &mut found, &mut fingerprints);
        }
        if !masked.is_empty() {
            *sent += masked.len() as u64;
            if chunked_out {
                write::chunk(&mut out, &masked)
            } else {
                out.extend_from_slice(&masked)
            }
            masked.clear();
        }
        if reader.done && chunked_out {
            out.extend_from_slice(write::LAST_CHUNK);
        }
        if !out.is_empty() {
            if down.write_all(&out).await.is_err() || down.flush().await.is_err() {
                return Err(());
            }
            out.clear();
        }
        if reader.done {
            return Ok(kind_out != BodyKind::CloseDelimited || chunked_out);
        }
        match deadline(idle, c.rbuf.fill(&mut c.stream, crate::proxy::io::READ_BUF)).await {
            Some(Ok(0)) => reader.eof().map_err(|e| tracing::warn!(worker = w.id, error = %e, "upstream body"))?,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(()),
        }
    }
}

/// Findings of a streamed text body: counted, logged and kept for the record (block acts as
/// mask once the head is out). Their path is the body's, ``; each with the keyed fingerprint
/// the scanner took while it still held the value (`fingerprints`, one per finding).
fn log_stream_findings(w: &Worker, ctx: &mut RequestCtx, d: &DetectCfg, found: &mut Vec<crate::detect::engine::Finding>, fingerprints: &mut Vec<Option<String>>) {
    let mut fps = fingerprints.drain(..);
    for f in found.drain(..) {
        let fingerprint = fps.next().flatten();
        let m = &d.engine.meta()[f.rule as usize];
        let action = match d.action(Direction::Response, f.rule) {
            Action::Off => continue,
            Action::Block => Action::Mask,
            a => a,
        };
        w.metrics.finding(&ctx.route, "response", &m.kind, action.as_str());
        tracing::info!(target: "sluice::detect", route = %ctx.route, direction = "response", kind = %m.kind, rule = %m.id, action = action.as_str(), body = "text", "finding");
        let encoding = f.encoding.map(crate::detect::decode::Encoding::name);
        ctx.findings.push(crate::detect::hook::Recorded::new(Direction::Response, m, String::new(), action, None, fingerprint, encoding));
    }
}
