//! Could the lazy DFA of the class-led patterns (`detect/lazy.rs`) skip text while nothing is in
//! progress? For the shipped pack, and then without the rules named on the command line
//! (comma-separated id prefixes, one set per argument, each adding to the ones before), over
//! ~1 MiB of corpus text this prints:
//! - how many bytes the DFA reads in an idle state (the start state after a word byte or after
//!   any other byte: no pattern in progress), and how long those idle stretches are;
//! - which bytes can leave an idle state, and how much of the text they are;
//! - the DFA's time per MiB (`Lazy::find`, four lanes, best of 20), to show what a pattern
//!   costs it.
//!
//! Run: `cargo run --release -p sluice-benches --example lazy_idle -- pii.email
//! secret.azure_client_secret`.

use regex_automata::hybrid::dfa::DFA;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use sluice::detect::rules::{default_dir, load_dir};
use sluice::detect::lazy;
use sluice_benches::{corpus_text, in_lazy_dfa};
use std::time::Instant;

fn main() {
    let text = corpus_text(1 << 20);
    let hay = text.as_bytes();
    // (rule id, pattern, caseless) of every pattern the engine gives the lazy DFA.
    let mut class_led: Vec<(String, String, bool)> = Vec::new();
    for l in load_dir(&default_dir()).expect("rule packs") {
        if l.rule.context_required {
            continue;
        }
        for p in l.rule.patterns.iter().filter(|p| in_lazy_dfa(p, l.rule.caseless)) {
            class_led.push((l.rule.id.clone(), p.clone(), l.rule.caseless));
        }
    }
    let mut without: Vec<String> = Vec::new();
    for arg in std::iter::once(String::new()).chain(std::env::args().skip(1)) {
        without.extend(arg.split(',').filter(|x| !x.is_empty()).map(String::from));
        let kept: Vec<&(String, String, bool)> = class_led.iter().filter(|p| !without.iter().any(|w| p.0.starts_with(w.as_str()))).collect();
        println!("without {without:?}: {} patterns", kept.len());
        idle(&kept, hay);
        let specs: Vec<(u32, &str, bool)> = kept.iter().enumerate().map(|(i, p)| (i as u32, p.1.as_str(), p.2)).collect();
        let l = lazy::Lazy::new(&specs, 256).expect("lazy DFA").expect("patterns");
        let (mut caches, mut out, mut best) = (l.caches(), Vec::new(), f64::MAX);
        for _ in 0..20 {
            out.clear();
            let t = Instant::now();
            l.find(&mut caches, hay, &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("  Lazy::find {:.3} ms per MiB, {} ends", best * 1e3 * f64::from(1 << 20) / hay.len() as f64, out.len());
    }
}

/// Step the DFA of `pats` over `hay` one byte at a time, counting the bytes read in an idle
/// state and the stretches of them.
fn idle(pats: &[&(String, String, bool)], hay: &[u8]) {
    let exprs: Vec<String> = pats.iter().map(|p| lazy::spelled(&p.1, p.2).into_owned()).collect();
    let dfa = DFA::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(true))
        .configure(DFA::config().match_kind(MatchKind::All).cache_capacity(8 << 20))
        .build_many(&exprs)
        .expect("DFA");
    let mut cache = dfa.create_cache();
    let after = |c: &mut _, before: &[u8]| dfa.start_state_forward(c, &Input::new(before).range(1..)).expect("start state");
    let (after_other, after_word) = (after(&mut cache, b" x"), after(&mut cache, b"ax"));
    let is_idle = |s| s == after_other || s == after_word;
    let mut s = dfa.start_state_forward(&mut cache, &Input::new(hay)).expect("start state");
    // Idle bytes by the length of their stretch: 1–3, 4–7, 8–15, 16–31, 32–63, 64+.
    let (mut idle_bytes, mut stretches, mut run, mut by_len) = (0usize, 0usize, 0usize, [0usize; 6]);
    let mut stretch_ends = |run: &mut usize| {
        if *run > 0 {
            stretches += 1;
            by_len[(usize::BITS - 1 - run.leading_zeros()).saturating_sub(1).min(5) as usize] += *run;
            *run = 0;
        }
    };
    for &b in hay {
        if is_idle(s) {
            idle_bytes += 1;
            run += 1;
        } else {
            stretch_ends(&mut run);
        }
        s = dfa.next_state(&mut cache, s, b).expect("no quit bytes");
    }
    stretch_ends(&mut run);
    let leaves: Vec<u8> = (0..=255u8)
        .filter(|&b| [after_other, after_word].into_iter().any(|st| !is_idle(dfa.next_state(&mut cache, st, b).expect("no quit bytes"))))
        .collect();
    let share = |n: usize| 100.0 * n as f64 / hay.len() as f64;
    println!(
        "  idle {:.1} % of bytes in {stretches} stretches (mean {:.1} bytes); share of idle bytes in stretches of 1–3, 4–7, 8–15, 16–31, 32–63, 64+ bytes: {}",
        share(idle_bytes),
        idle_bytes as f64 / stretches.max(1) as f64,
        by_len.iter().map(|n| format!("{:.0} %", 100.0 * *n as f64 / idle_bytes.max(1) as f64)).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  bytes that can leave idle: {:?}, {:.1} % of the text",
        leaves.iter().filter(|b| b.is_ascii_graphic()).map(|&b| b as char).collect::<String>(),
        share(hay.iter().filter(|b| leaves.contains(b)).count())
    );
}
