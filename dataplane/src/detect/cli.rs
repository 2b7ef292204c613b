//! `sluice scan`: the detection engine offline, over files or stdin.
//! Exit status: 0 nothing found, 1 something found, 2 error.

use super::engine::{redact, Engine, Finding, ScanState};
use super::rules;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;

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
    pub rules: Option<PathBuf>,
}

struct Row {
    id: String,
    path: Option<String>,
    f: Finding,
}

pub fn run(o: Options) -> anyhow::Result<i32> {
    let dir = o.rules.clone().unwrap_or_else(rules::default_dir);
    let engine = Engine::compile(rules::load_dir(&dir)?)?;
    let mut st = engine.new_state().map_err(anyhow::Error::msg)?;
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
    let mut rows = Vec::new();
    for (name, text) in sources {
        let mode = match o.input {
            Input::Detect => detect(&text),
            m => m,
        };
        match mode {
            Input::Text | Input::Detect => {
                let f = engine.scan(&mut st, &text);
                if o.mask {
                    print!("{}", redact(&text, &f));
                }
                rows.extend(f.into_iter().map(|f| Row { id: name.clone(), path: None, f }));
            }
            Input::Jsonl => {
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let mut v: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{name}:{}: not JSON: {e}", n + 1))?;
                    let t = v.get("text").and_then(Value::as_str).ok_or_else(|| anyhow::anyhow!("{name}:{}: needs a \"text\" string", n + 1))?.to_owned();
                    let id = match v.get("id") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => format!("{name}:{}", n + 1),
                    };
                    let f = engine.scan(&mut st, &t);
                    if o.mask {
                        v["text"] = Value::String(redact(&t, &f));
                        println!("{v}");
                    }
                    rows.extend(f.into_iter().map(|f| Row { id: id.clone(), path: None, f }));
                }
            }
            Input::Json | Input::Tools => {
                let mut v: Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{name}: not JSON: {e}"))?;
                walk(&engine, &mut st, &mut v, String::new(), &name, o.mask, &mut rows);
                if o.mask {
                    println!("{v}");
                }
            }
        }
    }
    if !o.mask {
        print_rows(&rows, o.format);
    }
    Ok(if rows.is_empty() { 0 } else { 1 })
}

fn detect(text: &str) -> Input {
    let t = text.trim_start();
    if (t.starts_with('{') || t.starts_with('[')) && serde_json::from_str::<Value>(text).is_ok() {
        return Input::Json;
    }
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    if lines.peek().is_some() && lines.all(|l| serde_json::from_str::<Value>(l).ok().is_some_and(|v| v.get("text").is_some_and(Value::is_string))) {
        return Input::Jsonl;
    }
    Input::Text
}

/// Scan every string leaf (and object key) of a JSON value; masking rewrites leaves in place,
/// so the output stays valid JSON.
fn walk(e: &Engine, st: &mut ScanState, v: &mut Value, path: String, id: &str, mask: bool, rows: &mut Vec<Row>) {
    match v {
        Value::String(s) => {
            let f = e.scan(st, s);
            if mask && !f.is_empty() {
                *s = redact(s, &f);
            }
            rows.extend(f.into_iter().map(|f| Row { id: id.to_owned(), path: Some(path.clone()), f }));
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                walk(e, st, x, format!("{path}/{i}"), id, mask, rows);
            }
        }
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                walk(e, st, x, format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), id, mask, rows);
            }
        }
        _ => {}
    }
}

fn print_rows(rows: &[Row], format: Format) {
    match format {
        Format::Jsonl => {
            for r in rows {
                let mut o = json!({"id": r.id, "kind": r.f.kind, "category": r.f.category, "severity": r.f.severity,
                                   "rule": r.f.rule, "start": r.f.start, "end": r.f.end});
                if let Some(p) = &r.path {
                    o["path"] = json!(p);
                }
                println!("{o}");
            }
        }
        Format::Table => {
            println!("{:<16} {:<28} {:<10} {:<9} {:>7} {:>7}  {}", "ID", "KIND", "CATEGORY", "SEVERITY", "START", "END", "PATH");
            for r in rows {
                println!(
                    "{:<16} {:<28} {:<10} {:<9} {:>7} {:>7}  {}",
                    r.id,
                    r.f.kind,
                    format!("{:?}", r.f.category).to_lowercase(),
                    format!("{:?}", r.f.severity).to_lowercase(),
                    r.f.start,
                    r.f.end,
                    r.path.as_deref().unwrap_or("")
                );
            }
        }
    }
}
