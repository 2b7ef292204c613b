//! What each rule costs *inside* the pack: phase 1 of a block scan (every pattern without
//! start tracking, context-needing rules represented by their words, the percent
//! decode-candidate pattern; run-shaped and class-led patterns are found without Hyperscan,
//! the latter timed on their own first) compiled whole and then once without each rule; the difference in scan time over
//! ~1 MiB of corpus text is that rule's marginal cost. Rules alone (`som_cost`) hide how
//! Hyperscan's engines add up. Run: `cargo run --release -p sluice-benches --example marginal_cost`.
//! `marginal_cost inj.,pii.` times the pack without and with only the rules whose ids start so;
//! `ALONE=inj.` times each such rule in a database of its own instead; `RULES=DIR` reads the
//! packs in `DIR` (a copy with a pattern rewritten, to compare against the shipped one).

use hyperscan::prelude::*;
use sluice::detect::decode::PERCENT_CANDIDATE;
use sluice::detect::rules::{default_dir, load_dir};
use sluice::detect::{engine, lazy, runs};
use sluice_benches::{corpus_text, in_lazy_dfa};
use std::time::Instant;

fn main() {
    let text = corpus_text(1 << 20);
    let rules = load_dir(&std::env::var("RULES").map_or_else(|_| default_dir(), std::path::PathBuf::from)).expect("packs");
    // (rule id, expressions with their flags)
    let mut groups: Vec<(String, Vec<(String, CompileFlags)>)> = Vec::new();
    let mut class_led: Vec<(u32, String, bool)> = Vec::new();
    for l in &rules {
        let mut f = CompileFlags::UTF8;
        if l.rule.caseless {
            f |= CompileFlags::CASELESS;
        }
        let exprs = if l.rule.context_required {
            l.rule.context.iter().map(|w| (engine::literal(w), CompileFlags::UTF8 | CompileFlags::CASELESS)).collect()
        } else {
            let mine = |p: &&String| runs::shape(p, l.rule.caseless).is_none() && !lazy::eligible(p, l.rule.caseless);
            for p in l.rule.patterns.iter().filter(|p| in_lazy_dfa(p, l.rule.caseless)) {
                class_led.push((class_led.len() as u32, p.clone(), l.rule.caseless));
            }
            l.rule.patterns.iter().filter(mine).map(|p| (p.clone(), f)).collect()
        };
        groups.push((l.rule.id.clone(), exprs));
    }
    groups.push(("candidate.percent".into(), vec![(PERCENT_CANDIDATE.into(), CompileFlags::UTF8)]));
    let only: Option<Vec<String>> = std::env::args().nth(1).map(|a| a.split(',').map(String::from).collect());
    let time = |skip: &dyn Fn(&str) -> bool| -> f64 {
        let mut pats = Vec::new();
        for (id, exprs) in &groups {
            if skip(id) || exprs.is_empty() {
                continue;
            }
            for (e, f) in exprs {
                let mut p = Pattern::with_flags(e, *f).expect("pattern");
                p.id = Some(pats.len());
                pats.push(p);
            }
        }
        let db: BlockDatabase = Patterns::from(pats).build().expect("db");
        let sc = db.alloc_scratch().expect("scratch");
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let _ = db.scan(&text, &sc, |_, _, _, _| Matching::Continue);
            best = best.min(t.elapsed().as_secs_f64());
        }
        best * 1e3
    };
    {
        let l = lazy::Lazy::new(&class_led.iter().map(|(i, e, c)| (*i, e.as_str(), *c)).collect::<Vec<_>>(), 256).expect("lazy").expect("some");
        let mut cache = l.caches();
        let mut out = Vec::new();
        let mut best = f64::MAX;
        for _ in 0..5 {
            out.clear();
            let t = Instant::now();
            l.find(&mut cache, text.as_bytes(), &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("the {} class-led patterns in the lazy DFA: {:.2} ms per MiB, {} ends", class_led.len(), best * 1e3, out.len());
    }
    if let Ok(prefix) = std::env::var("ALONE") {
        let mut rows: Vec<(f64, String)> = groups.iter().filter(|g| g.0.starts_with(&prefix) && !g.1.is_empty()).map(|(id, _)| (time(&|x| x != id), id.clone())).collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (ms, id) in rows {
            let n = groups.iter().find(|g| g.0 == id).map(|g| g.1.len()).unwrap_or(0);
            println!("{ms:>7.3} ms alone  {id} ({n} patterns)");
        }
        return;
    }
    let all = time(&|_| false);
    println!("phase 1, whole pack: {all:.2} ms per MiB ({:.0} MB/s)", text.len() as f64 / all / 1e3);
    if let Some(ids) = &only {
        let rest = time(&|id| ids.iter().any(|x| id.starts_with(x.as_str())));
        println!("without {ids:?}: {rest:.2} ms ({:.0} MB/s)", text.len() as f64 / rest / 1e3);
        let just = time(&|id| !ids.iter().any(|x| id.starts_with(x.as_str())));
        println!("only {ids:?}: {just:.2} ms ({:.0} MB/s)", text.len() as f64 / just / 1e3);
        return;
    }
    let without: Vec<(f64, &str)> = groups.iter().filter(|g| !g.1.is_empty()).map(|(id, _)| (time(&|x| x == id), id.as_str())).collect();
    // The machine's speed drifts over the minutes this takes: the whole pack again, the best
    // of both as the reference.
    let all = all.min(time(&|_| false));
    println!("whole pack, best of two: {all:.2} ms");
    let mut rows: Vec<(f64, &str)> = without.into_iter().map(|(t, id)| (all - t, id)).collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (ms, id) in rows.iter().take(25) {
        println!("{ms:>7.2} ms  {id}");
    }
}
