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

/// The `n`th of a series of `tools/call` responses whose text content is `size` bytes of
/// corpus text, each with the next `size` bytes.
pub fn mcp_response_nth(size: usize, n: usize) -> Vec<u8> {
    let text = corpus_text(size * (n + 1));
    let text = tail(&text, size);
    serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}], "isError": false}}))
        .expect("encode")
}

/// The last `size` bytes of `text`, from a character boundary.
fn tail(text: &str, size: usize) -> &str {
    let mut from = text.len().saturating_sub(size);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

/// A `tools/call` response of about `size` bytes whose structured content is database rows:
/// many short keys, most of them over numbers, booleans and nested values — the shape where
/// scanning object keys costs most. The text fields are corpus text, 60 bytes each.
/// The `n`th of a series: the next rows (their own ids and names) with the next corpus text.
pub fn mcp_rows_nth(size: usize, n: usize) -> Vec<u8> {
    let text = corpus_text(size * (n + 1));
    let mut pieces = tail(&text, size).as_bytes().chunks(60).map(|c| String::from_utf8_lossy(c).into_owned());
    let mut rows = Vec::new();
    let mut len = 0;
    for i in n * 100_000.. {
        if len >= size {
            break;
        }
        let note = pieces.next().unwrap_or_default();
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
