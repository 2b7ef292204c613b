//! `sluice scan`: the detection engine offline, over files or stdin, through the same code
//! the gateway runs (JSON leaf walk, masking). Exit status: 0 nothing found, 1 something
//! found, 2 error. `sluice rules` lists the rules and what each one matches.

use super::engine::{Engine, Finding};
use super::json::{Buffers, Walk};
use super::mask::{apply, Masker, Plan, Span, Strategy};
use super::rules;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Input {
    Detect,
    Text,
    Json,
    Jsonl,
    Tools,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Jsonl,
}

pub struct Options {
    pub files: Vec<PathBuf>,
    pub input: Input,
    pub format: Format,
    pub mask: bool,
    pub strategy: Option<Strategy>,
    pub fingerprint_key_file: Option<PathBuf>,
    pub rules: Option<PathBuf>,
}

struct Row {
    id: String,
    path: Option<String>,
    f: Finding,
}

/// Load and compile the packs in `dir` (default: the shipped ones).
pub fn load_engine(dir: Option<&Path>) -> anyhow::Result<Engine> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(rules::default_dir);
    Ok(Engine::compile(rules::load_dir(&dir)?)?)
}

pub fn run(o: Options) -> anyhow::Result<i32> {
    let engine = load_engine(o.rules.as_deref())?;
    let mut sc = engine.scanner().map_err(anyhow::Error::msg)?;
    let masker = match &o.fingerprint_key_file {
        Some(p) => Masker::new(Masker::key_from_material(&std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?), "[MASKED]"),
        None => Masker::default(),
    };
    let strategies: Vec<Strategy> = match o.strategy {
        Some(s) => vec![s; engine.meta().len()],
        None => engine.default_strategies(),
    };
    let plan = o.mask.then_some(Plan { masker: &masker, strategies: &strategies, mask_rule: &|_| true });
    let sources: Vec<(String, String)> = if o.files.is_empty() {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        vec![("-".into(), s)]
    } else {
        o.files
            .iter()
            .map(|p| std::fs::read_to_string(p).map(|s| (p.display().to_string(), s)).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())))
            .collect::<Result<_, _>>()?
    };
    let walk = Walk { engine: &engine, mask: plan, skip_binary: true };
    let mut bufs = Buffers::default();
    let mut rows = Vec::new();
    for (name, text) in sources {
        let mode = match o.input {
            Input::Detect => detect(&text),
            m => m,
        };
        match mode {
            Input::Text | Input::Detect => {
                let mut f = Vec::new();
                engine.scan(&mut sc, &text, &mut f);
                if let Some(p) = plan {
                    print!("{}", mask_text(&engine, p, &text, &f));
                }
                rows.extend(f.into_iter().map(|f| Row { id: name.clone(), path: None, f }));
            }
            Input::Jsonl => {
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let mut v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{name}:{}: not JSON: {e}", n + 1))?;
                    let t = v.get("text").and_then(serde_json::Value::as_str).ok_or_else(|| anyhow::anyhow!("{name}:{}: needs a \"text\" string", n + 1))?.to_owned();
                    let id = match v.get("id") {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => format!("{name}:{}", n + 1),
                    };
                    let mut f = Vec::new();
                    engine.scan(&mut sc, &t, &mut f);
                    if let Some(p) = plan {
                        v["text"] = serde_json::Value::String(mask_text(&engine, p, &t, &f));
                        println!("{v}");
                    }
                    rows.extend(f.into_iter().map(|f| Row { id: id.clone(), path: None, f }));
                }
            }
            Input::Json | Input::Tools => {
                let mut bytes = text.into_bytes();
                let mut v = crate::jsonrpc::read_value(&mut bytes).map_err(|e| anyhow::anyhow!("{name}: not JSON the scanner reads: {e}"))?;
                let mut found = Vec::new();
                walk.run(&mut sc, &mut bufs, &mut v, &mut found);
                if plan.is_some() {
                    println!("{}", simd_json::to_string(&v)?);
                }
                rows.extend(found.into_iter().map(|f| Row { id: name.clone(), path: Some(f.path), f: f.finding }));
            }
        }
    }
    if plan.is_none() {
        print_rows(&engine, &rows, o.format);
    }
    Ok(if rows.is_empty() { 0 } else { 1 })
}

/// Mask the findings in a plain text.
pub fn mask_text(engine: &Engine, plan: Plan<'_>, text: &str, f: &[Finding]) -> String {
    let meta = engine.meta();
    let spans: Vec<Span<'_>> = f
        .iter()
        .filter(|f| (plan.mask_rule)(f.rule))
        .map(|f| Span { start: f.start, end: f.end, kind: &meta[f.rule as usize].kind, strategy: plan.strategies[f.rule as usize] })
        .collect();
    let mut out = String::new();
    apply(plan.masker, text, &spans, &mut out);
    out
}

fn detect(text: &str) -> Input {
    let t = text.trim_start();
    if (t.starts_with('{') || t.starts_with('[')) && serde_json::from_str::<serde_json::Value>(text).is_ok() {
        return Input::Json;
    }
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    if lines.peek().is_some()
        && lines.all(|l| serde_json::from_str::<serde_json::Value>(l).ok().is_some_and(|v| v.get("text").is_some_and(serde_json::Value::is_string)))
    {
        return Input::Jsonl;
    }
    Input::Text
}

fn print_rows(engine: &Engine, rows: &[Row], format: Format) {
    let meta = engine.meta();
    match format {
        Format::Jsonl => {
            for r in rows {
                let m = &meta[r.f.rule as usize];
                let mut o = json!({"id": r.id, "kind": m.kind, "category": m.category, "severity": m.severity,
                                   "rule": m.id, "start": r.f.start, "end": r.f.end});
                if let Some(p) = &r.path {
                    o["path"] = json!(p);
                }
                if let Some(e) = r.f.encoding {
                    o["encoding"] = json!(e);
                }
                println!("{o}");
            }
        }
        Format::Table => {
            println!("{:<16} {:<32} {:<10} {:<9} {:>7} {:>7}  PATH", "ID", "KIND", "CATEGORY", "SEVERITY", "START", "END");
            for r in rows {
                let m = &meta[r.f.rule as usize];
                println!(
                    "{:<16} {:<32} {:<10} {:<9} {:>7} {:>7}  {}",
                    r.id,
                    m.kind,
                    format!("{:?}", m.category).to_lowercase(),
                    format!("{:?}", m.severity).to_lowercase(),
                    r.f.start,
                    r.f.end,
                    r.path.as_deref().unwrap_or("")
                );
            }
        }
    }
}

/// `sluice rules`: every rule and built-in check.
pub fn list(dir: Option<PathBuf>, format: Format) -> anyhow::Result<()> {
    let engine = load_engine(dir.as_deref())?;
    for m in engine.meta() {
        match format {
            Format::Jsonl => println!("{}", serde_json::to_string(m)?),
            Format::Table => println!(
                "{:<38} {:<34} {:<10} {:<9} {:<12} {}",
                m.id,
                m.kind,
                format!("{:?}", m.category).to_lowercase(),
                format!("{:?}", m.severity).to_lowercase(),
                format!("{:?}", m.mask).to_lowercase(),
                m.doc
            ),
        }
    }
    Ok(())
}
