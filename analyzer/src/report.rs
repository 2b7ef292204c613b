//! `report --from … --to …`: an audit report of a time range for a compliance reviewer —
//! sessions, identities, tools, plain HTTP calls, decisions, findings by kind, masked values, approvals (count
//! and wait times), blocked attempts, requests refused before inspection, requests servers sent agents, chain alerts, pin changes — as JSON (the data),
//! Markdown (tables) or HTML (tables and bar charts, self-contained: no script, no fetch).

use anyhow::{Context as _, Result};
use datafusion::arrow::json::ArrayWriter;
use datafusion::prelude::SessionContext;
use serde_json::{json, Value};

/// The report's sections: (id, title, SQL over the range). `{range}` is the time filter.
const SECTIONS: &[(&str, &str, &str)] = &[
    ("tools", "Tool calls by tool", "SELECT tool, count(*) AS calls, count(DISTINCT session) AS sessions, sum(CASE WHEN error_code IS NOT NULL THEN 1 ELSE 0 END) AS errors FROM tool_calls WHERE {range} GROUP BY tool ORDER BY calls DESC, tool LIMIT 50"),
    ("http", "Plain HTTP calls by route and method", "SELECT route, http_method, sum(CASE WHEN direction = 'request' THEN 1 ELSE 0 END) AS calls, sum(CASE WHEN direction = 'response' AND status >= 400 THEN 1 ELSE 0 END) AS failed, count(DISTINCT subject) AS callers FROM http_messages WHERE {range} GROUP BY route, http_method ORDER BY calls DESC, route, http_method LIMIT 50"),
    ("identities", "Callers", "SELECT identity['subject'] AS subject, count(DISTINCT session) AS sessions, sum(CASE WHEN kind = 'request' AND method = 'tools/call' THEN 1 ELSE 0 END) AS calls FROM events WHERE {range} AND identity IS NOT NULL GROUP BY identity['subject'] ORDER BY calls DESC, subject LIMIT 50"),
    ("decisions", "Decisions", "SELECT stage, action, coalesce(rule, '-') AS rule, count(*) AS n FROM decisions WHERE {range} GROUP BY stage, action, coalesce(rule, '-') ORDER BY n DESC, stage, action LIMIT 50"),
    ("blocked", "Blocked attempts", "SELECT ts, subject, tool, action, coalesce(rule, '-') AS rule, reason FROM decisions WHERE {range} AND action IN ('deny', 'refuse', 'rate_limited') AND stage <> 'protocol' ORDER BY ts LIMIT 200"),
    ("protocol", "Requests refused before inspection", "SELECT status, reason, count(*) AS n, count(DISTINCT client_ip) AS clients, min(ts) AS first, max(ts) AS last FROM decisions WHERE {range} AND stage = 'protocol' GROUP BY status, reason ORDER BY n DESC, status, reason LIMIT 50"),
    ("findings", "Findings by kind", "SELECT kind, category, count(*) AS n, sum(CASE WHEN action = 'mask' THEN 1 ELSE 0 END) AS masked, sum(CASE WHEN action = 'block' THEN 1 ELSE 0 END) AS blocked FROM findings WHERE {range} GROUP BY kind, category ORDER BY n DESC, kind LIMIT 50"),
    ("approvals", "Approvals", "SELECT state, count(*) AS n, CAST(approx_percentile_cont(waited_ms, 0.5) AS BIGINT) AS p50_wait_ms, CAST(approx_percentile_cont(waited_ms, 0.9) AS BIGINT) AS p90_wait_ms, max(waited_ms) AS max_wait_ms FROM approvals WHERE {range} AND step IN ('approval_decided', 'approval_expired') GROUP BY state ORDER BY n DESC"),
    ("server_requests", "Requests servers sent agents (sampling, elicitation, roots)", "SELECT e.route, e.method, coalesce(e.tool, '-') AS tool, count(*) AS requests, sum(CASE WHEN d.action = 'deny' THEN 1 ELSE 0 END) AS refused FROM (SELECT * FROM events WHERE {range} AND kind = 'request' AND direction = 'response') e LEFT JOIN (SELECT session, rpc_id, method, action FROM decisions WHERE {range} AND direction = 'response') d ON d.session = e.session AND d.rpc_id = e.rpc_id AND d.method = e.method GROUP BY e.route, e.method, coalesce(e.tool, '-') ORDER BY requests DESC, e.route, e.method LIMIT 50"),
    ("alerts", "Chain alerts", "SELECT rule, severity, count(*) AS n, count(DISTINCT session) AS sessions FROM alerts WHERE {range} GROUP BY rule, severity ORDER BY n DESC, rule"),
    ("pins", "Tool description changes (pins)", "SELECT ts, route, pin['tool'] AS tool, pin['change'] AS change FROM events WHERE {range} AND kind = 'pin_change' ORDER BY ts LIMIT 200"),
];

/// Which column of a section is drawn as bars (label column, value column).
fn chart(id: &str) -> Option<(&'static str, &'static str)> {
    match id {
        "tools" => Some(("tool", "calls")),
        "decisions" => Some(("action", "n")),
        "findings" => Some(("kind", "n")),
        "alerts" => Some(("rule", "n")),
        _ => None,
    }
}

/// A query's rows as JSON objects, and its column names in order.
async fn query(ctx: &SessionContext, sql: &str) -> Result<(Vec<String>, Vec<Value>)> {
    let df = ctx.sql(sql).await.with_context(|| sql.to_owned())?;
    let cols: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    Ok((cols, collect(df.collect().await?)?))
}

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Value>> {
    Ok(query(ctx, sql).await?.1)
}

fn collect(batches: Vec<datafusion::arrow::array::RecordBatch>) -> Result<Vec<Value>> {
    let mut w = ArrayWriter::new(Vec::new());
    for b in &batches {
        w.write(b)?;
    }
    w.finish()?;
    let bytes = w.into_inner();
    Ok(if bytes.is_empty() { Vec::new() } else { serde_json::from_slice(&bytes)? })
}

/// Gather the report's data for `[from, to)` (RFC 3339 times).
pub async fn build(ctx: &SessionContext, from: &str, to: &str) -> Result<Value> {
    for t in [from, to] {
        chrono_check(t)?;
    }
    let range = format!("ts >= to_timestamp_micros('{from}') AND ts < to_timestamp_micros('{to}')");
    let summary = rows(
        ctx,
        &format!(
            "SELECT count(*) AS events, count(DISTINCT session) AS sessions, count(DISTINCT identity['subject']) AS identities, \
             sum(CASE WHEN kind = 'request' AND method = 'tools/call' THEN 1 ELSE 0 END) AS tool_calls, \
             sum(CASE WHEN kind = 'decision' AND decision['action'] IN ('deny', 'refuse', 'rate_limited') AND decision['stage'] <> 'protocol' THEN 1 ELSE 0 END) AS blocked, \
             sum(CASE WHEN kind = 'decision' AND decision['stage'] = 'protocol' THEN 1 ELSE 0 END) AS refused_before_inspection, \
             sum(CASE WHEN kind = 'approval_requested' THEN 1 ELSE 0 END) AS approvals_requested, \
             sum(CASE WHEN kind = 'pin_change' THEN 1 ELSE 0 END) AS pin_changes \
             FROM events WHERE {range}"
        ),
    )
    .await?;
    let masked = rows(ctx, &format!("SELECT count(*) AS masked FROM findings WHERE {range} AND action = 'mask'")).await?;
    let alerts = rows(ctx, &format!("SELECT count(*) AS alerts FROM alerts WHERE {range}")).await?;
    let mut s = summary.into_iter().next().unwrap_or_default();
    if let Some(o) = s.as_object_mut() {
        o.insert("masked_values".into(), masked.first().and_then(|m| m.get("masked")).cloned().unwrap_or(0.into()));
        o.insert("alerts".into(), alerts.first().and_then(|m| m.get("alerts")).cloned().unwrap_or(0.into()));
    }
    let mut sections = Vec::new();
    for (id, title, sql) in SECTIONS {
        let (cols, data) = query(ctx, &sql.replace("{range}", &range)).await.with_context(|| format!("report section {id}"))?;
        sections.push(json!({ "id": id, "title": title, "columns": cols, "rows": data }));
    }
    Ok(json!({ "from": from, "to": to, "generated_by": format!("sluice-analyzer {}", env!("CARGO_PKG_VERSION")), "summary": s, "sections": sections }))
}

pub(crate) fn chrono_check(t: &str) -> Result<()> {
    let ok = t.len() >= 10 && t.as_bytes()[4] == b'-' && t.as_bytes()[7] == b'-' && t.chars().all(|c| c.is_ascii_alphanumeric() || "-:.+TZ ".contains(c));
    anyhow::ensure!(ok, "{t:?} is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)");
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn columns(section: &Value) -> Vec<String> {
    section["columns"].as_array().map(|a| a.iter().map(cell).collect()).unwrap_or_default()
}

/// Markdown: a summary list and a table per section.
pub fn markdown(r: &Value) -> String {
    let mut out = format!("# Sluice audit report\n\n{} to {}\n\n## Summary\n\n", cell(&r["from"]), cell(&r["to"]));
    if let Some(o) = r["summary"].as_object() {
        for (k, v) in o {
            out.push_str(&format!("- {}: {}\n", k.replace('_', " "), cell(v)));
        }
    }
    for s in r["sections"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n## {}\n\n", cell(&s["title"])));
        let rows = s["rows"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            out.push_str("None in this period.\n");
            continue;
        }
        let cols = columns(s);
        out.push_str(&format!("| {} |\n|{}\n", cols.join(" | "), "---|".repeat(cols.len())));
        for row in &rows {
            let cells: Vec<String> = cols.iter().map(|c| cell(&row[c]).replace('|', "\\|")).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A horizontal bar chart as inline SVG.
fn bars(rows: &[Value], label: &str, value: &str) -> String {
    let items: Vec<(String, f64)> = rows.iter().take(12).map(|r| (cell(&r[label]), r[value].as_f64().unwrap_or(0.0))).collect();
    let max = items.iter().map(|i| i.1).fold(1.0, f64::max);
    let h = 22 * items.len() + 10;
    let mut svg = format!(r#"<svg class="chart" role="img" width="640" height="{h}" viewBox="0 0 640 {h}">"#);
    for (i, (l, v)) in items.iter().enumerate() {
        let y = 5 + i * 22;
        let w = (v / max * 380.0).max(1.0);
        svg.push_str(&format!(
            r##"<text x="0" y="{}" font-size="12">{}</text><rect x="200" y="{y}" width="{w:.0}" height="16" fill="#0969da"/><text x="{:.0}" y="{}" font-size="12">{}</text>"##,
            y + 12,
            esc(&l.chars().take(28).collect::<String>()),
            206.0 + w,
            y + 12,
            v
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// HTML: summary cards, a chart and a table per section.
pub fn html(r: &Value) -> String {
    let mut out = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sluice audit report</title><style>
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1f24}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.card b{display:block;font-size:1.4rem}table{border-collapse:collapse;width:100%;margin-top:.5rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eaeef2;vertical-align:top}.none{color:#57606a}
</style></head><body>"#,
    );
    out.push_str(&format!("<h1>Sluice audit report</h1><p>{} to {}</p><section id=\"summary\"><h2>Summary</h2><div class=\"cards\">", esc(&cell(&r["from"])), esc(&cell(&r["to"]))));
    if let Some(o) = r["summary"].as_object() {
        for (k, v) in o {
            out.push_str(&format!("<div class=\"card\"><b>{}</b>{}</div>", esc(&cell(v)), esc(&k.replace('_', " "))));
        }
    }
    out.push_str("</div></section>");
    for s in r["sections"].as_array().into_iter().flatten() {
        let id = cell(&s["id"]);
        out.push_str(&format!("<section id=\"{}\"><h2>{}</h2>", esc(&id), esc(&cell(&s["title"]))));
        let rows = s["rows"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            out.push_str("<p class=\"none\">None in this period.</p></section>");
            continue;
        }
        if let Some((l, v)) = chart(&id) {
            out.push_str(&bars(&rows, l, v));
        }
        let cols = columns(s);
        out.push_str("<table><thead><tr>");
        for c in &cols {
            out.push_str(&format!("<th>{}</th>", esc(c)));
        }
        out.push_str("</tr></thead><tbody>");
        for row in &rows {
            out.push_str("<tr>");
            for c in &cols {
                out.push_str(&format!("<td>{}</td>", esc(&cell(&row[c]))));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></section>");
    }
    out.push_str(&format!("<footer><p class=\"none\">{}</p></footer></body></html>\n", esc(&cell(&r["generated_by"]))));
    out
}
