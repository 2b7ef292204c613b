use hyperscan::prelude::*;
use sluice::detect::rules::{default_dir, load_dir};
use sluice_benches::corpus_text;
use std::time::Instant;

fn measure(name: &str, pats: Vec<(String, bool)>, text: &str, flags: CompileFlags) {
    let ps: Vec<Pattern> = pats.iter().enumerate().map(|(i, (p, c))| {
        let mut f = flags;
        if *c { f |= CompileFlags::CASELESS; }
        let mut pat = Pattern::with_flags(p, f).unwrap_or_else(|e| panic!("{p}: {e}"));
        pat.id = Some(i);
        pat
    }).collect();
    let db: BlockDatabase = Patterns::from(ps).build().expect("db");
    let sc = db.alloc_scratch().expect("scratch");
    let mut n = 0u64;
    let t = Instant::now();
    for _ in 0..5 {
        let _ = db.scan(text, &sc, |_, _, _, _| { n += 1; Matching::Continue });
    }
    let mbs = (text.len() * 5) as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("{name}: {} patterns {mbs:.1} MB/s, {} matches per pass", pats.len(), n / 5);
}

fn main() {
    let text = corpus_text(1 << 20);
    let rules = load_dir(&default_dir()).expect("packs");
    let class: Vec<String> = std::env::args().skip(1).collect();
    let mut lit = Vec::new();
    let mut cls = Vec::new();
    for l in &rules {
        for p in &l.rule.patterns {
            if class.iter().any(|c| l.rule.id.starts_with(c)) { cls.push((p.clone(), l.rule.caseless)); } else { lit.push((p.clone(), l.rule.caseless)); }
        }
    }
    let f = CompileFlags::UTF8;
    measure("literal-led", lit.clone(), &text, f);
    measure("literal-led SINGLEMATCH", lit.clone(), &text, f | CompileFlags::SINGLEMATCH);
    measure("class-led", cls.clone(), &text, f);
    let trig = vec![("@".to_string(), false), (r"\d{3}".into(), false)];
    measure("triggers", trig, &text, f);
    let trig2 = vec![(r"[0-9][0-9 .\-/]{5,}[0-9]".to_string(), false)];
    measure("digitrun", trig2, &text, f);
    let mut all = lit.clone(); all.extend(cls.clone());
    measure("all", all, &text, f);
}
