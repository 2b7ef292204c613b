//! Shared inputs for the benchmarks: realistic tool-output text built from the labelled
//! detection corpus (`dataplane/tests/corpus`), and MCP responses of a given size carrying it.

use std::path::Path;

/// About `size` bytes of corpus text (benign tool outputs with planted values, in order),
/// repeated as needed and cut on a character boundary.
pub fn corpus_text(size: usize) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataplane/tests/corpus");
    let mut docs = Vec::new();
    for f in ["benign.jsonl", "labelled.jsonl"] {
        let text = std::fs::read_to_string(dir.join(f)).expect("corpus file");
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("corpus line");
            docs.push(v["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    // Interleave: one planted document per ~5 benign ones, as in real traffic with findings.
    let (benign, planted) = docs.split_at(1200.min(docs.len()));
    let mut out = String::with_capacity(size + 4096);
    let (mut b, mut p) = (0, 0);
    while out.len() < size {
        for _ in 0..5 {
            out.push_str(&benign[b % benign.len()]);
            out.push('\n');
            b += 1;
        }
        if !planted.is_empty() {
            out.push_str(&planted[p % planted.len()]);
            out.push('\n');
            p += 1;
        }
    }
    let mut end = size.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

/// `count` consecutive pieces of corpus text of about `size` bytes each (cut on character
/// boundaries), from one run of it.
fn pieces(size: usize, count: usize) -> Vec<String> {
    let text = corpus_text(size * count);
    let mut out = Vec::with_capacity(count);
    let mut from = 0;
    for k in 1..=count {
        let mut to = (size * k).min(text.len());
        while !text.is_char_boundary(to) {
            to -= 1;
        }
        out.push(text[from..to].to_owned());
        from = to;
    }
    out
}

/// A series of `count` different `tools/call` responses, each with the next `size` bytes of
/// corpus text as its text content.
pub fn mcp_responses(size: usize, count: usize) -> Vec<Vec<u8>> {
    pieces(size, count)
        .into_iter()
        .map(|text| {
            serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}], "isError": false}}))
                .expect("encode")
        })
        .collect()
}

/// A series of `count` different `tools/call` responses of about `size` bytes whose structured
/// content is database rows: many short keys, most of them over numbers, booleans and nested
/// values — the shape where scanning object keys costs most. Each has rows of its own (ids,
/// names) and the next corpus text, in notes of 60 bytes.
pub fn mcp_rows_series(size: usize, count: usize) -> Vec<Vec<u8>> {
    pieces(size, count).iter().enumerate().map(|(n, text)| rows(text, size, n)).collect()
}

fn rows(text: &str, size: usize, n: usize) -> Vec<u8> {
    let mut notes = text.as_bytes().chunks(60).map(|c| String::from_utf8_lossy(c).into_owned());
    let mut rows = Vec::new();
    let mut len = 0;
    for i in n * 100_000.. {
        if len >= size {
            break;
        }
        let note = notes.next().unwrap_or_default();
        let row = serde_json::json!({
            "id": i, "name": format!("user {i}"), "note": note, "active": i % 3 != 0, "score": i as f64 / 7.0,
            "tags": ["a", "b"], "address": {"city": "Lyon", "zip": i % 100}, "created": 1_700_000_000 + i,
        });
        len += row.to_string().len();
        rows.push(row);
    }
    serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": 7, "result": {"content": [], "structuredContent": {"rows": rows}, "isError": false}}))
        .expect("encode")
}

/// Does the engine run this pattern of a rule without required context words in its lazy DFA
/// of class-led patterns? As `Engine::compile` decides (a run-shaped pattern goes to the run
/// pass first), for the examples that time the DFA on its own.
pub fn in_lazy_dfa(pattern: &str, caseless: bool) -> bool {
    sluice::detect::runs::shape(pattern, caseless).is_none() && sluice::detect::lazy::eligible(pattern, caseless)
}
