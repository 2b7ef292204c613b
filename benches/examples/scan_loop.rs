//! `Engine::scan` over ~1 MiB of corpus text in a loop, for profilers: the rule pack compiles
//! first (its threads would otherwise fill the profile), then N passes (default 200) print
//! MiB/s and the findings per pass (which must not change with a speed change). Run:
//! `cargo run --release -p sluice-benches --example scan_loop [N [RULES_DIR]]`, or under
//! `perf record --delay 3000 …` to skip the compile. Packs are read when it starts (from the
//! repository's `dataplane/rules` unless given): to compare two versions of a pack, run the
//! same binary over both directories.

use sluice::detect::engine::Engine;
use sluice::detect::rules::{default_dir, load_dir};
use sluice_benches::corpus_text;
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(2).map_or_else(default_dir, std::path::PathBuf::from);
    let e = Engine::compile(load_dir(&dir).expect("rule packs")).expect("compile");
    let mut sc = e.scanner().expect("scratch");
    let text = corpus_text(1 << 20);
    let passes: usize = std::env::args().nth(1).map_or(200, |a| a.parse().expect("N: a number of passes"));
    let mut out = Vec::new();
    let t = Instant::now();
    let mut found = 0;
    for _ in 0..passes {
        out.clear();
        e.scan(&mut sc, &text, &mut out);
        found += out.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{:.1} MiB/s ({} findings per pass)", (passes * text.len()) as f64 / secs / f64::from(1 << 20), found / passes.max(1));
}
