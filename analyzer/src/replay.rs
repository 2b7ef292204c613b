//! `replay SESSION`: one session's transcript in order — who called what, what came back
//! (masked, as recorded), what was decided and why — as text or JSON. `replay --subject S`:
//! everything one caller did in a period, across its sessions and on plain HTTP routes (which
//! belong to no session), in time order.

use anyhow::{bail, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::ArrayWriter;
use datafusion::prelude::SessionContext;

const COLUMNS: &str = "id, ts, kind, session, direction, method, tool, rpc_id, identity, route, payload, latency_us, status, error_code, decision, findings, approval, gateway, http_method, http_path, task";

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The session's events in order as JSON objects (one per event).
pub async fn events(ctx: &SessionContext, session: &str) -> Result<Vec<serde_json::Value>> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE session = {} ORDER BY ts, id", quoted(session));
    let rows = rows(ctx, &sql).await?;
    if rows.is_empty() {
        bail!("no events for session {session} in the archive (ingest first, or check the id: `sql \"SELECT DISTINCT session FROM events\"`)");
    }
    Ok(rows)
}

/// Everything `subject` did in `[from, to)` (RFC 3339 times; either may be open), across its
/// sessions and on plain HTTP routes, in time order.
pub async fn subject_events(ctx: &SessionContext, subject: &str, from: Option<&str>, to: Option<&str>) -> Result<Vec<serde_json::Value>> {
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE identity['subject'] = {}", quoted(subject));
    for (t, op) in [(from, ">="), (to, "<")] {
        if let Some(t) = t {
            crate::report::chrono_check(t)?;
            sql.push_str(&format!(" AND ts {op} to_timestamp_micros({})", quoted(t)));
        }
    }
    sql.push_str(" ORDER BY ts, id");
    let rows = rows(ctx, &sql).await?;
    if rows.is_empty() {
        bail!("no events of {subject} in the archive for that period (check the name: `sql \"SELECT DISTINCT identity['subject'] FROM events\"`)");
    }
    Ok(rows)
}

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<serde_json::Value>> {
    let batches: Vec<RecordBatch> = ctx.sql(sql).await?.collect().await?;
    let mut w = ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b)?;
    }
    w.finish()?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

/// A human-readable transcript line per event; with `sessions`, each line says where it
/// happened (the session's id, or `http` for a plain HTTP exchange).
pub fn text(rows: &[serde_json::Value], sessions: bool) -> String {
    let mut out = String::new();
    for r in rows {
        let ts = s(r, "ts");
        let place = match r.get("session").and_then(|x| x.as_str()) {
            _ if !sessions => String::new(),
            Some(sid) => format!("[{sid}]  "),
            None if r.get("http_method").is_some_and(|m| m.is_string()) => "[http]  ".to_owned(),
            None => "[-]  ".to_owned(),
        };
        let id = r.get("rpc_id").and_then(|x| x.as_str()).map(|i| format!(" #{i}")).unwrap_or_default();
        let payload = r.get("payload").and_then(|p| p.as_str()).map(|p| if p.len() > 300 { format!(" {}…", &p[..p.char_indices().take_while(|(i, _)| *i < 300).last().map_or(0, |(i, _)| i)]) } else { format!(" {p}") }).unwrap_or_default();
        let who = r.get("identity").and_then(|i| i.get("subject")).and_then(|x| x.as_str()).map(|s| format!(" [{s}]")).unwrap_or_default();
        let line = match s(r, "kind") {
            "request" | "notification" if s(r, "direction") == "request" => format!("→ {}{}{id}{who}{payload}", s(r, "method"), tool(r)),
            "request" | "notification" => format!("⇠ {}{} (from the server){id}{payload}", s(r, "method"), tool(r)),
            "response" if s(r, "direction") == "response" => {
                let lat = r.get("latency_us").and_then(|x| x.as_u64()).map(|u| format!(" {:.1} ms", u as f64 / 1000.0)).unwrap_or_default();
                let err = r.get("error_code").and_then(|x| x.as_i64()).map(|c| format!(" error {c}")).unwrap_or_default();
                format!("← answer{id}{}{err}{lat}{payload}", tool(r))
            }
            "response" => format!("⇢ the agent's answer{id}{payload}"),
            "document" if s(r, "direction") == "request" => format!("→ HTTP {} {}{who}{payload}", s(r, "http_method"), s(r, "http_path")),
            "document" => {
                let lat = r.get("latency_us").and_then(|x| x.as_u64()).map(|u| format!(" {:.1} ms", u as f64 / 1000.0)).unwrap_or_default();
                let status = r.get("status").and_then(|x| x.as_u64()).map(|c| format!(" {c}")).unwrap_or_default();
                format!("← HTTP{status} {} {}{lat}{payload}", s(r, "http_method"), s(r, "http_path"))
            }
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
        out.push_str(&format!("{ts}  {place}{line}\n"));
    }
    out
}

/// The tool a line is about, and the task (MCP 2025-11-25) it belongs to.
fn tool(r: &serde_json::Value) -> String {
    let tool = r.get("tool").and_then(|t| t.as_str()).map(|t| format!(" {t}")).unwrap_or_default();
    match r.get("task").and_then(|t| t.as_str()) {
        Some(task) => format!("{tool} (task {task})"),
        None => tool,
    }
}
