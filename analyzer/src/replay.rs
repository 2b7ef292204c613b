//! `replay SESSION`: one session's transcript in order — who called what, what came back
//! (masked, as recorded), what was decided and why — as text or JSON.

use anyhow::{bail, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::ArrayWriter;
use datafusion::prelude::SessionContext;

const COLUMNS: &str = "id, ts, kind, direction, method, tool, rpc_id, identity, route, payload, latency_us, status, error_code, decision, findings, approval, gateway";

/// The session's events in order as JSON objects (one per event).
pub async fn events(ctx: &SessionContext, session: &str) -> Result<Vec<serde_json::Value>> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE session = '{}' ORDER BY ts, id", session.replace('\'', "''"));
    let batches: Vec<RecordBatch> = ctx.sql(&sql).await?.collect().await?;
    let mut w = ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b)?;
    }
    w.finish()?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&bytes)?;
    if rows.is_empty() {
        bail!("no events for session {session} in the archive (ingest first, or check the id: `sql \"SELECT DISTINCT session FROM events\"`)");
    }
    Ok(rows)
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

/// A human-readable transcript line per event.
pub fn text(rows: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for r in rows {
        let ts = s(r, "ts");
        let id = r.get("rpc_id").and_then(|x| x.as_str()).map(|i| format!(" #{i}")).unwrap_or_default();
        let payload = r.get("payload").and_then(|p| p.as_str()).map(|p| if p.len() > 300 { format!(" {}…", &p[..p.char_indices().take_while(|(i, _)| *i < 300).last().map_or(0, |(i, _)| i)]) } else { format!(" {p}") }).unwrap_or_default();
        let who = r.get("identity").and_then(|i| i.get("subject")).and_then(|x| x.as_str()).map(|s| format!(" [{s}]")).unwrap_or_default();
        let line = match s(r, "kind") {
            "request" | "notification" if s(r, "direction") == "request" => format!("→ {}{}{id}{who}{payload}", s(r, "method"), tool(r)),
            "request" | "notification" => format!("⇠ {} (from the server){id}{payload}", s(r, "method")),
            "response" if s(r, "direction") == "response" => {
                let lat = r.get("latency_us").and_then(|x| x.as_u64()).map(|u| format!(" {:.1} ms", u as f64 / 1000.0)).unwrap_or_default();
                let err = r.get("error_code").and_then(|x| x.as_i64()).map(|c| format!(" error {c}")).unwrap_or_default();
                format!("← answer{id}{}{err}{lat}{payload}", tool(r))
            }
            "response" => format!("⇢ the agent's answer{id}{payload}"),
            "decision" => {
                let d = r.get("decision").cloned().unwrap_or_default();
                format!(
                    "✔ {} {} by {}{}{id}{}",
                    s(&d, "stage"),
                    s(&d, "action"),
                    d.get("rule").and_then(|x| x.as_str()).unwrap_or("-"),
                    tool(r),
                    d.get("reason").and_then(|x| x.as_str()).map(|x| format!(": {x}")).unwrap_or_default()
                )
            }
            "findings" => {
                let fs: Vec<String> = r
                    .get("findings")
                    .and_then(|f| f.as_array())
                    .map(|a| a.iter().map(|f| format!("{} ({}, {}) at {} → {}", s(f, "kind"), s(f, "category"), s(f, "severity"), s(f, "path"), s(f, "action"))).collect())
                    .unwrap_or_default();
                format!("! found in the {}{id}: {}", s(r, "direction"), fs.join("; "))
            }
            k if k.starts_with("approval_") => {
                let a = r.get("approval").cloned().unwrap_or_default();
                let by = a.get("by").and_then(|x| x.as_str()).map(|b| format!(" by {b}")).unwrap_or_default();
                format!("⏸ approval {} {}{by}{}", s(&a, "id"), s(&a, "state"), tool(r))
            }
            k => format!("· {k}{}", r.get("gateway").and_then(|g| g.get("detail")).and_then(|d| d.as_str()).map(|d| format!(" ({d})")).unwrap_or_default()),
        };
        out.push_str(&format!("{ts}  {line}\n"));
    }
    out
}

fn tool(r: &serde_json::Value) -> String {
    r.get("tool").and_then(|t| t.as_str()).map(|t| format!(" {t}")).unwrap_or_default()
}
