//! Streamed scanning: a body that arrives in chunks is scanned with Hyperscan's streaming
//! mode and masked without buffering it whole. The scanner holds back the last
//! [`Engine::hold_back`] bytes (the widest rule plus its context window): a match can only end
//! in a later chunk if it starts inside that window, so everything before it is final and is
//! released, masked. A finding that straddles the release point holds the point back to its
//! end. Chunks may split anywhere, including inside a UTF-8 character (the incomplete bytes
//! wait for the next chunk); invalid UTF-8 is scanned as a space and passed through unchanged.

use super::decode::{self, Encoding};
use super::engine::{Engine, Finding, Match, Scanner};
use super::invisible::{self, BUILTINS};
use super::mask::Plan;
use super::normalize::normalize_into;
use super::rules::Category;
use hyperscan::prelude::*;

pub struct StreamScanner<'e> {
    engine: &'e Engine,
    stream: Option<Stream>,
    /// Original bytes not yet released, starting at absolute offset `pending_base`.
    pending: Vec<u8>,
    pending_base: usize,
    /// Original bytes normalised so far (excludes `utf8_tail`).
    fed: usize,
    utf8_tail: Vec<u8>,
    /// Normalised text window from absolute normalised offset `win_base`, with the original
    /// byte range behind every byte.
    win: String,
    win_origin: Vec<(usize, usize)>,
    win_base: usize,
    norm_len: usize,
    /// Raw matches not yet settled: (pattern id, absolute normalised from, to).
    raw: Vec<(u32, usize, usize)>,
    /// Confirmed findings not yet released (absolute original offsets).
    found: Vec<Finding>,
    /// Released secret findings a finding not yet released may still lie inside (they end
    /// after the last release's settle point): a PII finding inside one is part of it, as in
    /// a block scan ([`Engine::scan`]).
    secrets: Vec<Finding>,
    last_end: Vec<usize>,
    norm: String,
    origin: Vec<(u32, u32)>,
    batch: Vec<(u32, u32, u32)>,
    /// Invisible-character runs, across pieces.
    invisible: invisible::Finder,
    /// The keyed fingerprint of each finding released so far and not yet taken, in the order
    /// of the findings (computed from the original bytes while they are still held; `None`
    /// without a masking plan).
    fingerprints: Vec<Option<String>>,
}

impl Drop for StreamScanner<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            // SAFETY: the stream is open and owned; a null scratch and callback only free it.
            unsafe {
                hyperscan_sys::hs_close_stream(foreign_types::ForeignType::as_ptr(&s), std::ptr::null_mut(), None, std::ptr::null_mut());
            }
            std::mem::forget(s);
        }
    }
}

impl<'e> StreamScanner<'e> {
    pub fn new(engine: &'e Engine) -> Result<Self, String> {
        let stream = engine.stream_db().open_stream().map_err(|e| e.to_string())?;
        Ok(StreamScanner {
            engine,
            stream: Some(stream),
            pending: Vec::new(),
            pending_base: 0,
            fed: 0,
            utf8_tail: Vec::new(),
            win: String::new(),
            win_origin: Vec::new(),
            win_base: 0,
            norm_len: 0,
            raw: Vec::new(),
            found: Vec::new(),
            secrets: Vec::new(),
            last_end: vec![0; engine.meta().len()],
            norm: String::new(),
            origin: Vec::new(),
            batch: Vec::new(),
            invisible: invisible::Finder::default(),
            fingerprints: Vec::new(),
        })
    }

    /// Feed a chunk; released (masked) bytes are appended to `out`, findings released with
    /// them to `findings` (absolute offsets in the original stream).
    pub fn feed(&mut self, sc: &mut Scanner, plan: Option<Plan<'_>>, chunk: &[u8], out: &mut Vec<u8>, findings: &mut Vec<Finding>) {
        self.pending.extend_from_slice(chunk);
        let mut work = std::mem::take(&mut self.utf8_tail);
        work.extend_from_slice(chunk);
        let mut at = 0;
        while at < work.len() {
            match std::str::from_utf8(&work[at..]) {
                Ok(s) => {
                    self.push_text(sc, s);
                    at = work.len();
                }
                Err(e) => {
                    let ok = e.valid_up_to();
                    // SAFETY: `from_utf8` vouched for the first `ok` bytes.
                    self.push_text(sc, unsafe { std::str::from_utf8_unchecked(&work[at..at + ok]) });
                    at += ok;
                    match e.error_len() {
                        Some(n) => {
                            self.push_replacement(sc, n);
                            at += n;
                        }
                        None => {
                            self.utf8_tail.extend_from_slice(&work[at..]);
                            at = work.len();
                        }
                    }
                }
            }
        }
        let limit = self.norm_len.saturating_sub(self.engine.hold_back());
        self.settle(sc, limit);
        let orig_limit = if limit >= self.norm_len { self.fed } else { self.win_origin[limit - self.win_base].0 };
        self.release(plan, orig_limit, out, findings);
        self.trim(limit);
    }

    /// Move the fingerprints of the findings released so far (one per finding, in order) to
    /// `into`.
    pub fn take_fingerprints(&mut self, into: &mut Vec<Option<String>>) {
        into.append(&mut self.fingerprints);
    }

    /// End of the stream: settle every match and release everything. Returns the fingerprints
    /// not yet taken (see [`StreamScanner::take_fingerprints`]).
    pub fn finish(mut self, sc: &mut Scanner, plan: Option<Plan<'_>>, out: &mut Vec<u8>, findings: &mut Vec<Finding>) -> Vec<Option<String>> {
        if !self.utf8_tail.is_empty() {
            let n = self.utf8_tail.len();
            self.utf8_tail.clear();
            self.push_replacement(sc, n);
        }
        {
            let b = self.engine.rules().len() as u32;
            let found = &mut self.found;
            self.invisible.finish(&mut |k, a, e| found.push(builtin_finding(b, k, a, e)));
        }
        if let Some(s) = self.stream.take() {
            let raw = &mut self.raw;
            let _ = s.close(sc.scratch(), |id, from, to, _| {
                raw.push((id, from as usize, to as usize));
                Matching::Continue
            });
        }
        self.settle(sc, usize::MAX);
        let end = self.pending_base + self.pending.len();
        self.release(plan, end, out, findings);
        std::mem::take(&mut self.fingerprints)
    }

    fn push_text(&mut self, sc: &mut Scanner, s: &str) {
        if s.is_empty() {
            return;
        }
        let base = self.fed;
        {
            // Every piece (ASCII too: it may end an invisible run the last piece began).
            let b = self.engine.rules().len() as u32;
            let found = &mut self.found;
            self.invisible.feed(s, base, &mut |k, a, e| found.push(builtin_finding(b, k, a, e)));
        }
        let start = self.win.len();
        if !s.is_ascii() && normalize_into(s, &mut self.norm, &mut self.origin) {
            self.win.push_str(&self.norm);
            self.win_origin.extend(self.origin.iter().map(|&(a, e)| (base + a as usize, base + e as usize)));
        } else {
            self.win.push_str(s);
            self.win_origin.extend((0..s.len()).map(|i| (base + i, base + i + 1)));
        }
        self.fed += s.len();
        self.scan_window_from(sc, start);
    }

    /// Bytes that are not UTF-8: scanned as one space, passed through unchanged.
    fn push_replacement(&mut self, sc: &mut Scanner, n: usize) {
        let b = self.engine.rules().len() as u32;
        let found = &mut self.found;
        self.invisible.boundary(&mut |k, a, e| found.push(builtin_finding(b, k, a, e)));
        let start = self.win.len();
        self.win.push(' ');
        self.win_origin.push((self.fed, self.fed + n));
        self.fed += n;
        self.scan_window_from(sc, start);
    }

    fn scan_window_from(&mut self, sc: &mut Scanner, start: usize) {
        let new = &self.win.as_bytes()[start..];
        self.norm_len += new.len();
        let raw = &mut self.raw;
        if let Some(s) = &self.stream {
            let _ = s.scan(new, sc.scratch(), |id, from, to, _| {
                raw.push((id, from as usize, to as usize));
                Matching::Continue
            });
        }
    }

    /// Confirm every raw match that starts before `limit` (absolute normalised offset).
    fn settle(&mut self, sc: &mut Scanner, limit: usize) {
        let win_base = self.win_base;
        let win_end = win_base + self.win.len();
        self.batch.clear();
        let batch = &mut self.batch;
        let engine = self.engine;
        self.raw.retain(|&(id, from, to)| {
            // A decode candidate has no start offset; it is settled by its end.
            let from = if engine.is_candidate(id) { to } else { from };
            if from >= limit {
                return true;
            }
            // A match that starts before the window is wider than any rule allows.
            if from >= win_base && to <= win_end {
                let from = if engine.is_candidate(id) { win_base } else { from };
                batch.push((id, (from - win_base) as u32, (to - win_base) as u32));
            }
            false
        });
        if self.batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut decoded = Vec::new();
        let (win, origin) = (&self.win, &self.win_origin);
        let (found, last_end) = (&mut self.found, &mut self.last_end);
        engine.finish(win, &mut batch, &mut |m| match m {
            Match::Rule(r, s, e) => {
                let (os, oe) = (origin[s].0, origin[e - 1].1);
                if os >= last_end[r as usize] {
                    last_end[r as usize] = oe;
                    found.push(Finding { rule: r, start: os, end: oe, encoding: None });
                }
            }
            Match::Candidate(enc, s, e) => decoded.push((enc, s, e)),
        });
        for (enc, s, e) in decoded {
            let plain = match enc {
                Encoding::Base64 => decode::base64(&self.win[s..e]),
                Encoding::Percent => decode::percent(&self.win[s..e]),
            };
            if let Some(plain) = plain {
                let (os, oe) = (self.win_origin[s].0, self.win_origin[e - 1].1);
                let mut inner = Vec::new();
                self.engine.scan_at(sc, &plain, 1, &mut inner);
                self.found.extend(inner.into_iter().map(|f| Finding { rule: f.rule, start: os, end: oe, encoding: f.encoding.or(Some(enc)) }));
            }
        }
        self.batch = batch;
    }

    /// Release original bytes before `limit` (moved forward past any finding straddling it),
    /// masking the findings inside.
    fn release(&mut self, plan: Option<Plan<'_>>, mut limit: usize, out: &mut Vec<u8>, findings: &mut Vec<Finding>) {
        self.found.sort_by_key(|f| (f.start, f.end));
        // Findings settled after this call start at or after `limit` (as given): a released
        // secret that ends there or before can hold none of them.
        let settled = limit;
        loop {
            let ext = self.found.iter().filter(|f| f.start < limit && f.end > limit).map(|f| f.end).max();
            match ext {
                Some(e) => limit = e,
                None => break,
            }
        }
        let limit = limit.min(self.pending_base + self.pending.len());
        if limit <= self.pending_base {
            return;
        }
        let n = self.found.iter().take_while(|f| f.start < limit).count();
        let (engine, meta) = (self.engine, self.engine.meta());
        self.secrets.extend(self.found[..n].iter().filter(|f| meta[f.rule as usize].category == Category::Secret));
        let mut pos = self.pending_base;
        let mut repl = String::new();
        for f in &self.found[..n] {
            if self.secrets.iter().any(|o| engine.explains(o, f)) {
                continue;
            }
            findings.push(*f);
            // The value is still held here (released findings lie in `pending`); the analyzer
            // follows it across calls by this, as for findings in JSON.
            let held = f.start >= self.pending_base && f.end <= self.pending_base + self.pending.len();
            self.fingerprints.push(plan.filter(|_| held).map(|p| p.masker.fingerprint(&String::from_utf8_lossy(&self.pending[f.start - self.pending_base..f.end - self.pending_base]))));
            let Some(p) = plan.filter(|p| (p.mask_rule)(f.rule)) else { continue };
            if f.end <= pos {
                continue;
            }
            let s = f.start.max(pos);
            out.extend_from_slice(&self.pending[pos - self.pending_base..s - self.pending_base]);
            repl.clear();
            let value = String::from_utf8_lossy(&self.pending[s - self.pending_base..f.end - self.pending_base]);
            p.masker.replace(p.strategies[f.rule as usize], &meta[f.rule as usize].kind, &value, &mut repl);
            out.extend_from_slice(repl.as_bytes());
            pos = f.end;
        }
        self.found.drain(..n);
        self.secrets.retain(|s| s.end > settled);
        let upto = limit.max(pos);
        out.extend_from_slice(&self.pending[pos - self.pending_base..upto - self.pending_base]);
        self.pending.drain(..upto - self.pending_base);
        self.pending_base = upto;
    }

    /// Drop window bytes no unsettled match or context check can need.
    fn trim(&mut self, limit: usize) {
        let keep_from = limit.saturating_sub(self.engine.max_context()).max(self.win_base);
        let mut cut = keep_from - self.win_base;
        while cut > 0 && !self.win.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut > 4096 {
            self.win.drain(..cut);
            self.win_origin.drain(..cut);
            self.win_base += cut;
        }
    }
}

fn builtin_finding(base_rule: u32, k: invisible::Builtin, start: usize, end: usize) -> Finding {
    let i = BUILTINS.iter().position(|x| *x == k).unwrap_or(0) as u32;
    Finding { rule: base_rule + i, start, end, encoding: None }
}

/// Mask a body given as chunks, all at once (tests, fuzzing, offline use): the masked bytes
/// and the findings, as the gateway would produce them chunk by chunk.
pub fn mask_chunks(engine: &Engine, plan: Option<Plan<'_>>, chunks: &[&[u8]]) -> Result<(Vec<u8>, Vec<Finding>), String> {
    let mut sc = engine.scanner()?;
    let mut st = StreamScanner::new(engine)?;
    let (mut out, mut f) = (Vec::new(), Vec::new());
    for c in chunks {
        st.feed(&mut sc, plan, c, &mut out, &mut f);
    }
    st.finish(&mut sc, plan, &mut out, &mut f);
    Ok((out, f))
}


#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::detect::mask::Masker;
    use crate::detect::rules::{default_dir, load_dir};
    use std::sync::OnceLock;

    fn engine() -> &'static Engine {
        static E: OnceLock<Engine> = OnceLock::new();
        E.get_or_init(|| Engine::compile(load_dir(&default_dir()).unwrap()).unwrap())
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<(String, usize, usize)>) {
        let e = engine();
        let masker = Masker::new([3; 32], "[MASKED]");
        let strategies = e.default_strategies();
        let plan = Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true };
        let (out, f) = mask_chunks(e, Some(plan), chunks).unwrap();
        (out, f.into_iter().map(|f| (e.meta()[f.rule as usize].kind.clone(), f.start, f.end)).collect())
    }

    /// Every released finding has the keyed fingerprint of its original bytes — the one a JSON
    /// leaf holding the same value gets — however the stream was cut.
    #[test]
    fn streamed_findings_carry_the_fingerprint_of_their_value() {
        let e = engine();
        let masker = Masker::new([3; 32], "[MASKED]");
        let strategies = e.default_strategies();
        let plan = Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true };
        let text = "row 1: ana.sousa@example.org, IBAN GB82 WEST 1234 5698 7654 32; row 2: rui@example.net\n".repeat(3);
        for cut in (1..text.len()).step_by(7) {
            let mut sc = e.scanner().unwrap();
            let mut st = StreamScanner::new(e).unwrap();
            let (mut out, mut found, mut fps) = (Vec::new(), Vec::new(), Vec::new());
            for part in [&text.as_bytes()[..cut], &text.as_bytes()[cut..]] {
                st.feed(&mut sc, Some(plan), part, &mut out, &mut found);
                st.take_fingerprints(&mut fps);
            }
            fps.extend(st.finish(&mut sc, Some(plan), &mut out, &mut found));
            assert_eq!(found.len(), 9, "cut at {cut}: {found:?}");
            assert_eq!(fps.len(), found.len(), "one fingerprint per finding");
            for (f, fp) in found.iter().zip(&fps) {
                assert_eq!(fp.as_deref(), Some(masker.fingerprint(&text[f.start..f.end]).as_str()), "cut at {cut}: {f:?}");
            }
            assert_eq!(fps[0], fps[3], "the same address, the same fingerprint");
        }
    }

    /// The same text split at every byte position gives the same masked output and findings
    /// as one block scan.
    #[test]
    fn split_at_every_byte_matches_the_block_scan() {
        let text = "log: user ｂｏｂ@example.com paid with 4111 1111 1111 1111; key AKIAIOSFODNN7EXAMPLE, é ok\n".as_bytes();
        let (whole, wf) = run(&[text]);
        assert!(String::from_utf8_lossy(&whole).contains("[email:"), "{}", String::from_utf8_lossy(&whole));
        assert!(wf.iter().any(|f| f.0 == "payment_card") && wf.iter().any(|f| f.0 == "aws_access_key_id"), "{wf:?}");
        for i in 1..text.len() {
            let (out, f) = run(&[&text[..i], &text[i..]]);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&whole), "split at {i}");
            assert_eq!(f, wf, "split at {i}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(run(&bytes).0, whole);
    }

    /// Fuzzing found this: a body with invalid UTF-8 and a soft-hyphen run inside a number,
    /// split right inside the first soft hyphen, was masked differently from the whole body
    /// (the invisible-character check only saw one piece at a time). Replays the fuzz input.
    #[test]
    fn fuzz_regression_soft_hyphens_split_inside_a_number() {
        let data = include_bytes!("../../tests/regressions/stream_scan-soft-hyphen-after-split.bin");
        let body = &data[1..];
        let at = (data[0] as usize % data.len()).min(body.len());
        let (whole, _) = run(&[body]);
        assert_eq!(run(&[&body[..at], &body[at..]]).0, whole);
        // And at every other split.
        for i in 0..=body.len() {
            assert_eq!(run(&[&body[..i], &body[i..]]).0, whole, "split at {i}");
        }
        assert!(!whole.windows(2).any(|w| w == [0xC2, 0xAD]), "the soft hyphens inside the number are removed");
    }

    type Spans = Vec<(u32, usize, usize)>;

    /// (rule, start, end) of a block scan of `text` and of a streamed scan of it cut in two at
    /// `cut`, sorted.
    pub(crate) fn block_and_stream(e: &Engine, sc: &mut crate::detect::engine::Scanner, text: &str, cut: usize) -> (Spans, Spans) {
        let mut block = Vec::new();
        e.scan(sc, text, &mut block);
        let at = cut.min(text.len());
        let (_, streamed) = mask_chunks(e, None, &[&text.as_bytes()[..at], &text.as_bytes()[at..]]).unwrap();
        let key = |f: &Finding| (f.rule, f.start, f.end);
        let (mut a, mut b): (Vec<_>, Vec<_>) = (block.iter().map(key).collect(), streamed.iter().map(key).collect());
        a.sort_unstable();
        b.sort_unstable();
        (a, b)
    }

    /// Block scans find starts in a second phase (phase 1 reports ends only); streaming uses
    /// one start-tracked database. Over every corpus document (benign and planted) both report
    /// the same findings at the same offsets.
    #[test]
    fn two_phase_block_scan_agrees_with_the_start_tracked_stream() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut docs = 0;
        for f in ["benign.jsonl", "labelled.jsonl"] {
            for line in std::fs::read_to_string(dir.join(f)).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let text = v["text"].as_str().unwrap();
                let (a, b) = block_and_stream(e, &mut sc, text, text.len());
                assert_eq!(a, b, "{f}: {text:?}");
                docs += 1;
            }
        }
        assert!(docs > 1400, "{docs}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The same agreement on generated text: values of every shape the run pass and the
        /// lazy DFA handle (and evasions), long enough for the DFA's two lanes, cut into two
        /// chunks. Pieces are separated, so no match is wider than its rule allows (where the
        /// two designs differ by construction: a block scan's start confirmation looks back
        /// only `max_width` bytes).
        #[test]
        fn block_scan_agrees_with_the_stream_on_generated_text(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES.to_vec()), 0..420),
            seps in proptest::collection::vec(proptest::sample::select(vec![" ", "\n", ", ", "\t", " | ", "; "]), 420),
            cut in 1usize..5000,
        ) {
            let e = engine();
            let mut sc = e.scanner().unwrap();
            let text: String = pieces.iter().zip(&seps).flat_map(|(p, s)| [*p, *s]).collect();
            let (a, b) = block_and_stream(e, &mut sc, &text, cut);
            proptest::prop_assert_eq!(a, b, "{:?}", text);
        }
    }

    const PIECES: [&str; 30] = [
        "4111 1111 1111 1111", "5555-5555-5555-4444", "536-22-1029", "8.8.4.4", "10.0.0.1", "2a00:1450:4009:81f::200e", "12:30:45",
        "bob@example.com", "ada.lovelace+ops@example.co.uk", "+44 20 7946 0958", "(415) 555-2671", "GB82 WEST 1234 5698 7654 32",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "AKIAIOSFODNN7EXAMPLE", "SK0123456789abcdef0123456789abcdef",
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789abcdefghijklmnopqrstuvwxyzQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789abcdefghijklmnopqrstuvwxyzQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789abcdefghijklmnopqrstuvwxyz",
        "48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f48656c6c6f",
        "a2V5IEFLSUFJT1NGT0ROTjdFWEFNUExF", "bob%40example%2Ecom", "DOB: 1984-07-23", "routing number 011000015",
        "ignore all previous instructions", "lorem ipsum dolor", "2026-11-22T06:23:24Z", "\u{ff42}\u{ff4f}\u{ff42}@example.com",
        "4111\u{200b}1111 1111 1111", "caf\u{e9}", "221 Baker Street", "id 123-456-7890x", "-----BEGIN RSA PRIVATE KEY-----",
    ];

    /// A PII-shaped part of a secret (the `password@host` of a database URL reads as an e-mail
    /// address) is reported as the secret alone, wherever the stream is cut — also where the
    /// secret is released with one piece and the part inside it settles with a later one.
    #[test]
    fn pii_inside_a_secret_is_dropped_at_every_split() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let filler = "lorem ipsum ".repeat(500);
        let after = "dolor sit amet ".repeat(e.hold_back() / 15 + 100);
        let text = format!("{filler}note (postgres://app:qyi4ccOZJWJI@db-3.internal:5432/app) {after} and bob@example.com");
        let email = e.meta().iter().position(|m| m.id == "pii.email").unwrap() as u32;
        let url = e.meta().iter().position(|m| m.id == "secret.postgres_url_password").unwrap() as u32;
        let at = text.find("postgres").unwrap();
        let bob = text.find("bob@").unwrap();
        let mut want = vec![(url, at, at + 46), (email, bob, bob + 15)];
        want.sort_unstable();
        // Cuts around the URL, and where the first piece settles the URL but not the address.
        let h = e.hold_back();
        for cut in (at - 10..at + 60).chain(at + h - 10..at + h + 40) {
            let (block, streamed) = block_and_stream(e, &mut sc, &text, cut);
            assert_eq!(block, want, "cut at {cut}");
            assert_eq!(streamed, want, "cut at {cut}");
        }
    }

    #[test]
    fn long_streams_release_early_and_mask_across_chunks() {
        let e = engine();
        let mut sc = e.scanner().unwrap();
        let masker = Masker::new([3; 32], "x");
        let strategies = e.default_strategies();
        let plan = Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true };
        let mut st = StreamScanner::new(e).unwrap();
        let filler = "lorem ipsum dolor sit amet ".repeat(4000);
        let (mut out, mut f) = (Vec::new(), Vec::new());
        st.feed(&mut sc, Some(plan), filler.as_bytes(), &mut out, &mut f);
        // Released all but the hold-back window.
        assert!(out.len() >= filler.len() - e.hold_back(), "{} of {}", out.len(), filler.len());
        st.feed(&mut sc, Some(plan), b"token ghp_aBcDeFgHiJkL", &mut out, &mut f);
        st.feed(&mut sc, Some(plan), b"mNoPqRsTuVwXyZ0123456789 end \xff\xfe bytes", &mut out, &mut f);
        st.finish(&mut sc, Some(plan), &mut out, &mut f);
        let tail = &out[filler.len()..];
        assert_eq!(tail, b"token [REDACTED:github_classic_token] end \xff\xfe bytes");
    }
}
