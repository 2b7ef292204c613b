//! Keeps an upstream's injected credential out of what goes back to the agent: every string
//! leaf of a response message that contains one of its secret values has it replaced.

use crate::hooks::{Direction, MessageHook, RequestCtx, Verdict};
use crate::jsonrpc::MessageInfo;
use simd_json::BorrowedValue;
use std::borrow::Cow;

pub const MARK: &str = "[REDACTED:upstream-credential]";

pub struct ScrubHook;

/// `text` with every secret replaced by [`MARK`].
fn replaced(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |t, x| t.replace(x.as_str(), MARK))
}

/// Response headers whose value holds one of `secrets`, as (position, value with each replaced
/// by [`MARK`]) for `write::end_to_end_headers`; empty when none does.
pub fn header_values(head: &crate::http::Head, secrets: &[String]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, (_, value)) in head.headers().enumerate() {
        if secrets.iter().any(|s| memchr::memmem::find(value, s.as_bytes()).is_some()) {
            out.push((i, replaced(&String::from_utf8_lossy(value), secrets)));
        }
    }
    out
}

fn scrub(v: &mut BorrowedValue<'_>, secrets: &[String]) -> bool {
    match v {
        BorrowedValue::String(s) => {
            if secrets.iter().any(|x| s.contains(x.as_str())) {
                *s = Cow::Owned(replaced(s, secrets));
                return true;
            }
            false
        }
        BorrowedValue::Array(a) => a.iter_mut().fold(false, |c, x| scrub(x, secrets) | c),
        BorrowedValue::Object(m) => m.iter_mut().fold(false, |c, (_, x)| scrub(x, secrets) | c),
        _ => false,
    }
}

impl MessageHook for ScrubHook {
    fn name(&self) -> &'static str {
        "credential-scrub"
    }

    fn on_message(&self, ctx: &mut RequestCtx, dir: Direction, _: &MessageInfo, value: &mut BorrowedValue<'_>) -> Verdict {
        let Some(c) = ctx.upstream_credential().filter(|_| dir == Direction::Response) else { return Verdict::Pass };
        if scrub(value, &c.secrets) {
            tracing::warn!(upstream = %ctx.upstream, "the upstream echoed its injected credential; scrubbed from the answer");
            Verdict::Changed
        } else {
            Verdict::Pass
        }
    }
}

/// Replaces an upstream's injected credential in a body streamed to the agent (a text answer
/// on a plain HTTP route), whatever the chunking: the last `longest − 1` bytes wait for the next
/// chunk, since a credential may start in them.
pub struct StreamScrub {
    secrets: Vec<String>,
    keep: usize,
    held: Vec<u8>,
    /// Some credential was replaced (for one log line).
    pub replaced: bool,
}

impl StreamScrub {
    pub fn new(secrets: &[String]) -> Self {
        // Longest first, so a value that contains another secret is replaced whole.
        let mut secrets = secrets.to_vec();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let keep = secrets.first().map_or(0, |s| s.len().saturating_sub(1));
        StreamScrub { secrets, keep, held: Vec::new(), replaced: false }
    }

    /// Take `input`; append to `out` what can go to the agent now.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.held.extend_from_slice(input);
        self.replace();
        let go = self.held.len().saturating_sub(self.keep);
        out.extend_from_slice(&self.held[..go]);
        self.held.drain(..go);
    }

    /// The end of the body: what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.replace();
        out.append(&mut self.held);
    }

    fn replace(&mut self) {
        for s in &self.secrets {
            let finder = memchr::memmem::Finder::new(s.as_bytes());
            if finder.find(&self.held).is_none() {
                continue;
            }
            let mut next = Vec::with_capacity(self.held.len());
            let mut at = 0;
            for i in finder.find_iter(&self.held) {
                if i >= at {
                    next.extend_from_slice(&self.held[at..i]);
                    next.extend_from_slice(MARK.as_bytes());
                    at = i + s.len();
                }
            }
            next.extend_from_slice(&self.held[at..]);
            self.held = next;
            self.replaced = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(secrets: &[String], text: &[u8]) -> Vec<u8> {
        let mut s = StreamScrub::new(secrets);
        let mut out = Vec::new();
        s.feed(text, &mut out);
        s.finish(&mut out);
        out
    }

    #[test]
    fn a_credential_split_at_every_byte_is_replaced() {
        let secrets = vec!["ghs_Upstream0123".to_owned(), "Bearer ghs_Upstream0123".to_owned()];
        let text = b"auth was Bearer ghs_Upstream0123; token ghs_Upstream0123ghs_Upstream0123 end";
        let want = format!("auth was {MARK}; token {MARK}{MARK} end").into_bytes();
        assert_eq!(whole(&secrets, text), want);
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let mut s = StreamScrub::new(&secrets);
                let mut out = Vec::new();
                for part in [&text[..cut], &text[cut..cut2], &text[cut2..]] {
                    s.feed(part, &mut out);
                }
                s.finish(&mut out);
                assert_eq!(out, want, "cut at {cut} and {cut2}");
            }
        }
    }

    proptest! {
        /// However the body is cut, the output is the same as whole, and holds no secret. (The
        /// secrets of one credential contain each other as suffixes — the token, and the header
        /// value ending in it — as here.)
        #[test]
        fn chunking_never_changes_the_output(text in proptest::collection::vec(prop_oneof![Just(b'k'), Just(b'e'), Just(b'y'), Just(b'-'), Just(b'='), any::<u8>()], 0..200), sizes in proptest::collection::vec(1usize..9, 1..60)) {
            let secrets = vec!["key-key-".to_owned(), "k=key-key-".to_owned()];
            let want = whole(&secrets, &text);
            let mut s = StreamScrub::new(&secrets);
            let (mut out, mut at, mut i) = (Vec::new(), 0, 0);
            while at < text.len() {
                let n = sizes[i % sizes.len()].min(text.len() - at);
                s.feed(&text[at..at + n], &mut out);
                at += n;
                i += 1;
            }
            s.finish(&mut out);
            prop_assert_eq!(&out, &want);
            for sec in &secrets {
                prop_assert!(memchr::memmem::find(&out, sec.as_bytes()).is_none());
            }
        }
    }
}
