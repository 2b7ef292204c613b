//! Block scans against the streamed scan: any UTF-8 text gives the same findings at the same
//! offsets, streamed in one piece or cut in two at a point the input chooses. A block scan finds ends in phase 1 (Hyperscan without start tracking, the lazy DFA
//! of class-led patterns in interleaved lanes, the run pass) and starts in phase 2 (the reverse
//! DFA, or Hyperscan start-tracked over a window); a streamed scan keeps one start-tracked
//! database and none of those fast paths, so it is the reference.
//!
//! The two differ by construction only where a pattern's leftmost match is wider than its rule's
//! `max_width` (phase 2 looks back only that far, so it finds a later start the stream never
//! reports; the run pass cuts a long run at the width): such inputs are skipped, found by a
//! start-tracked Hyperscan scan of the normalised text.
#![no_main]
use hyperscan::prelude::*;
use hyperscan::{Block, SomHorizon};
use libfuzzer_sys::fuzz_target;
use sluice::detect::engine::{Engine, Finding, Scanner};
use sluice::detect::normalize::normalize_into;
use sluice::detect::rules::{default_dir, load_dir};
use sluice::detect::stream::StreamScanner;
use std::cell::RefCell;
use std::sync::OnceLock;

struct Fixture {
    engine: Engine,
    /// Every rule pattern, start-tracked, and the width its rule allows.
    som: BlockDatabase,
    widths: Vec<usize>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rules = load_dir(&default_dir()).unwrap();
        let (mut pats, mut widths) = (Vec::new(), Vec::new());
        for l in &rules {
            for p in &l.rule.patterns {
                let mut flags = CompileFlags::SOM_LEFTMOST | CompileFlags::UTF8;
                if l.rule.caseless {
                    flags |= CompileFlags::CASELESS;
                }
                let mut pat = Pattern::with_flags(p, flags).unwrap();
                pat.id = Some(widths.len());
                pat.som = Some(SomHorizon::Large);
                pats.push(pat);
                widths.push(l.rule.max_width);
            }
        }
        let som = Patterns::from(pats).build::<Block>().unwrap();
        Fixture { engine: Engine::compile(rules).unwrap(), som, widths }
    })
}

fn key(f: &Finding) -> (u32, usize, usize) {
    (f.rule, f.start, f.end)
}

thread_local! {
    static SCRATCH: RefCell<(Scanner, Scratch)> = {
        let fx = fixture();
        RefCell::new((fx.engine.scanner().unwrap(), fx.som.alloc_scratch().unwrap()))
    };
}

fn streamed(e: &Engine, sc: &mut Scanner, pieces: &[&[u8]]) -> Vec<(u32, usize, usize)> {
    let mut st = StreamScanner::new(e).unwrap();
    let (mut out, mut found) = (Vec::new(), Vec::new());
    for p in pieces {
        st.feed(sc, None, p, &mut out, &mut found);
    }
    st.finish(sc, None, &mut out, &mut found);
    let mut keys: Vec<_> = found.iter().map(key).collect();
    keys.sort_unstable();
    keys
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let fx = fixture();
    SCRATCH.with_borrow_mut(|(sc, scratch)| {
        let (mut norm, mut origin) = (String::new(), Vec::new());
        let hay = if normalize_into(text, &mut norm, &mut origin) { norm.as_str() } else { text };
        let mut wide = false;
        let _ = fx.som.scan(hay, scratch, |id, from, to, _| {
            wide |= (to - from) as usize > fx.widths[id as usize];
            if wide { Matching::Terminate } else { Matching::Continue }
        });
        if wide {
            return;
        }
        let e = &fx.engine;
        let mut block = Vec::new();
        e.scan(sc, text, &mut block);
        let mut a: Vec<_> = block.iter().map(key).collect();
        a.sort_unstable();
        assert_eq!(a, streamed(e, sc, &[data]), "block (left) and streamed (right) findings differ");
        let cut = data.len() * usize::from(data.first().copied().unwrap_or(0)) / 256;
        assert_eq!(a, streamed(e, sc, &[&data[..cut], &data[cut..]]), "block (left) and streamed findings cut at {cut} (right) differ");
    });
});
