//! How much start-of-match tracking costs: the whole pack compiled with and without
//! SOM_LEFTMOST, scanned over ~1 MiB of corpus text (a tool for rule authors).
//! Run: `cargo run --release -p sluice-benches --example som_cost`.

use hyperscan::prelude::*;
use sluice::detect::rules::{default_dir, load_dir};
use sluice_benches::corpus_text;
use std::time::Instant;

fn main() {
    let text = corpus_text(1 << 20);
    let rules = load_dir(&default_dir()).expect("packs");
    for som in [true, false] {
        let mut pats = Vec::new();
        for l in &rules {
            for p in &l.rule.patterns {
                let mut f = CompileFlags::UTF8;
                if som {
                    f |= CompileFlags::SOM_LEFTMOST;
                }
                if l.rule.caseless {
                    f |= CompileFlags::CASELESS;
                }
                let mut pat = Pattern::with_flags(p, f).expect("pattern");
                pat.id = Some(pats.len());
                pats.push(pat);
            }
        }
        let db: BlockDatabase = Patterns::from(pats).build().expect("db");
        let sc = db.alloc_scratch().expect("scratch");
        let mut n = 0u64;
        let t = Instant::now();
        for _ in 0..5 {
            let _ = db.scan(&text, &sc, |_, _, _, _| {
                n += 1;
                Matching::Continue
            });
        }
        let mbs = (text.len() * 5) as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!("som={som}: {mbs:.1} MB/s, {} matches per pass", n / 5);
    }
    // Each rule alone, without SOM, slowest first: where the pack's time goes.
    let mut rows = Vec::new();
    for l in &rules {
        let pats: Vec<Pattern> = l.rule.patterns.iter().enumerate().map(|(i, p)| {
            let mut f = CompileFlags::UTF8;
            if l.rule.caseless {
                f |= CompileFlags::CASELESS;
            }
            let mut pat = Pattern::with_flags(p, f).expect("pattern");
            pat.id = Some(i);
            pat
        }).collect();
        let db: BlockDatabase = Patterns::from(pats).build().expect("db");
        let sc = db.alloc_scratch().expect("scratch");
        let t = Instant::now();
        for _ in 0..3 {
            let _ = db.scan(&text, &sc, |_, _, _, _| Matching::Continue);
        }
        rows.push(((text.len() * 3) as f64 / t.elapsed().as_secs_f64() / 1e6, l.rule.id.clone()));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (mbs, id) in rows.iter().take(15) {
        println!("{mbs:>9.1} MB/s  {id}");
    }
}
