//! Chain detections: SQL rules over the archive, one per file, that look across the calls of
//! a session (read personal data → write it → send it out; a value passed from one tool to
//! another; probing; …). The built-in rules (`analyzer/chains/*.sql`) are compiled into the
//! binary; users add their own with `--rules DIR`.
//!
//! A rule file starts with a header — `-- id:`, `-- severity:`, `-- summary:` — and holds
//! one query over `events` and the views that returns the columns `session`, `subject`, `ts`
//! (when the chain completed) and `evidence` (the ids of the events that make the chain).
//! Each row is an alert; its id is derived from the rule and the evidence, so running the
//! rules again never raises the same alert twice. A rule whose evidence can grow as more events
//! arrive (a count over a window) also returns an `incident` column (text): the id is then
//! derived from the rule and the incident, so continuous mode, which runs the rules while a
//! session is still going, raises it once — with the evidence known at that moment.

use anyhow::{bail, Context as _, Result};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListBuilder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::prelude::SessionContext;
use std::path::Path;
use std::sync::Arc;

pub const BUILTIN: &[(&str, &str)] = &[
    ("exfiltration.sql", include_str!("../chains/exfiltration.sql")),
    ("taint.sql", include_str!("../chains/taint.sql")),
    ("taint_to_http.sql", include_str!("../chains/taint_to_http.sql")),
    ("credential_to_network.sql", include_str!("../chains/credential_to_network.sql")),
    ("probing.sql", include_str!("../chains/probing.sql")),
    ("bulk_enumeration.sql", include_str!("../chains/bulk_enumeration.sql")),
    ("call_after_pin_change.sql", include_str!("../chains/call_after_pin_change.sql")),
    ("retry_after_denied_approval.sql", include_str!("../chains/retry_after_denied_approval.sql")),
    ("server_overreach.sql", include_str!("../chains/server_overreach.sql")),
];

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub severity: String,
    pub summary: String,
    pub sql: String,
    /// Where it came from (file name), for messages.
    pub source: String,
}

/// Parse a rule file: header, then the query.
pub fn parse(text: &str, source: &str) -> Result<Rule> {
    let header = |key: &str| {
        text.lines().take_while(|l| l.starts_with("--")).find_map(|l| l.trim_start_matches("--").trim().strip_prefix(key).map(|v| v.trim().to_owned()))
    };
    let id = header("id:").with_context(|| format!("{source}: the header needs `-- id: <rule id>`"))?;
    let severity = header("severity:").with_context(|| format!("{source}: the header needs `-- severity: low|medium|high|critical`"))?;
    if !["low", "medium", "high", "critical"].contains(&severity.as_str()) {
        bail!("{source}: severity {severity:?} is not low, medium, high or critical");
    }
    let summary = header("summary:").with_context(|| format!("{source}: the header needs `-- summary: <one line>`"))?;
    Ok(Rule { id, severity, summary, sql: text.to_owned(), source: source.to_owned() })
}

/// The built-in rules, then every `*.sql` in `dirs`.
pub fn load(builtin: bool, dirs: &[std::path::PathBuf]) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    if builtin {
        for (name, text) in BUILTIN {
            rules.push(parse(text, name)?);
        }
    }
    for d in dirs {
        let mut files: Vec<_> = std::fs::read_dir(d).with_context(|| format!("reading rule directory {}", d.display()))?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "sql")).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            let r = parse(&text, &f.display().to_string())?;
            if rules.iter().any(|x: &Rule| x.id == r.id) {
                bail!("{}: rule id {:?} is already used by {}", f.display(), r.id, rules.iter().find(|x| x.id == r.id).map_or("", |x| x.source.as_str()));
            }
            rules.push(r);
        }
    }
    Ok(rules)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    pub id: String,
    /// Microseconds since the Unix epoch.
    pub ts: i64,
    pub rule: String,
    pub severity: String,
    pub session: Option<String>,
    pub subject: Option<String>,
    pub summary: String,
    pub evidence: Vec<String>,
}

/// A result column of text (any string type: the archive's are views) as `Utf8`.
fn as_text(c: &ArrayRef) -> Option<ArrayRef> {
    use datafusion::arrow::datatypes::DataType;
    match c.data_type() {
        DataType::Utf8 => Some(c.clone()),
        DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => datafusion::arrow::compute::cast(c, &DataType::Utf8).ok(),
        _ => None,
    }
}

/// A result column of lists of text as `List(Utf8)`.
fn as_text_list(c: &ArrayRef) -> Option<ArrayRef> {
    use datafusion::arrow::datatypes::{DataType, Field};
    let item = match c.data_type() {
        DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        _ => return None,
    };
    if !matches!(item, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null) {
        return None;
    }
    datafusion::arrow::compute::cast(c, &DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))).ok()
}

/// Run one rule; its alerts.
pub async fn run_rule(ctx: &SessionContext, rule: &Rule) -> Result<Vec<Alert>> {
    let batches = ctx.sql(&rule.sql).await.with_context(|| format!("rule {} ({})", rule.id, rule.source))?.collect().await.with_context(|| format!("rule {} ({})", rule.id, rule.source))?;
    let mut out = Vec::new();
    for b in &batches {
        let col = |name: &str| b.column_by_name(name).with_context(|| format!("rule {} ({}) must return a `{name}` column", rule.id, rule.source));
        let text = |name: &str, c: &ArrayRef| as_text(c).with_context(|| format!("rule {}: `{name}` must be text", rule.id));
        let session = text("session", col("session")?)?;
        let session = session.as_string::<i32>();
        let subject = text("subject", col("subject")?)?;
        let subject = subject.as_string::<i32>();
        let ts = col("ts")?.as_primitive_opt::<TimestampMicrosecondType>().with_context(|| format!("rule {}: `ts` must be a timestamp", rule.id))?;
        let evidence = as_text_list(col("evidence")?).with_context(|| format!("rule {}: `evidence` must be a list of event ids", rule.id))?;
        let evidence = evidence.as_list::<i32>();
        let incident = b.column_by_name("incident").map(|c| text("incident", c)).transpose()?;
        let incident = incident.as_ref().map(|c| c.as_string::<i32>());
        for i in 0..b.num_rows() {
            let ev = evidence.value(i);
            let ev = ev.as_string::<i32>();
            let evidence: Vec<String> = ev.iter().flatten().map(str::to_owned).collect();
            let mut h = blake3::Hasher::new();
            h.update(rule.id.as_bytes());
            match incident.filter(|c| !c.is_null(i)) {
                // A rule whose evidence can grow as events arrive (a window's count) names the
                // incident, so the alert raised on the first events is not raised again.
                Some(c) => {
                    h.update(b"\0incident\0");
                    h.update(c.value(i).as_bytes());
                }
                None => {
                    for e in &evidence {
                        h.update(b"\0");
                        h.update(e.as_bytes());
                    }
                }
            }
            out.push(Alert {
                id: format!("al-{}", &h.finalize().to_hex()[..24]),
                ts: if ts.is_null(i) { 0 } else { ts.value(i) },
                rule: rule.id.clone(),
                severity: rule.severity.clone(),
                session: (!session.is_null(i)).then(|| session.value(i).to_owned()),
                subject: (!subject.is_null(i)).then(|| subject.value(i).to_owned()),
                summary: rule.summary.clone(),
                evidence,
            });
        }
    }
    Ok(out)
}

/// Alerts as a batch of the `alerts` table.
pub fn to_batch(alerts: &[Alert]) -> Result<RecordBatch> {
    let schema = Arc::new(crate::alerts_schema());
    let mut ev = ListBuilder::new(StringBuilder::new());
    for a in alerts {
        for e in &a.evidence {
            ev.values().append_value(e);
        }
        ev.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.id.as_str()))),
        Arc::new(TimestampMicrosecondArray::from_iter_values(alerts.iter().map(|a| a.ts)).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.rule.as_str()))),
        Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.severity.as_str()))),
        Arc::new(StringArray::from(alerts.iter().map(|a| a.session.as_deref()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(alerts.iter().map(|a| a.subject.as_deref()).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| a.summary.as_str()))),
        Arc::new(ev.finish()),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// Run every rule; the alerts not already in the archive's `alerts` table.
pub async fn run(ctx: &SessionContext, rules: &[Rule]) -> Result<Vec<Alert>> {
    run_timed(ctx, rules, &mut |_, _, _| {}).await
}

/// [`run`], reporting each rule's wall time and row count as it finishes.
pub async fn run_timed(ctx: &SessionContext, rules: &[Rule], each: &mut dyn FnMut(&Rule, std::time::Duration, usize)) -> Result<Vec<Alert>> {
    let known: std::collections::HashSet<String> = {
        let batches = ctx.sql("SELECT id FROM alerts").await?.collect().await?;
        batches.iter().flat_map(|b| b.column(0).as_string::<i32>().iter().flatten().map(str::to_owned).collect::<Vec<_>>()).collect()
    };
    let mut out = Vec::new();
    for r in rules {
        let t = std::time::Instant::now();
        let found = run_rule(ctx, r).await?;
        each(r, t.elapsed(), found.len());
        for a in found {
            if !known.contains(&a.id) && !out.iter().any(|x: &Alert| x.id == a.id) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Archive new alerts (one file per hour partition).
pub fn archive(root: &Path, alerts: &[Alert]) -> Result<u64> {
    if alerts.is_empty() {
        return Ok(0);
    }
    let batch = to_batch(alerts)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let mut files = 0;
    for (h, batches) in crate::archive::by_hour(&batch)? {
        crate::archive::write_file(&h.dir(root, "alerts"), &format!("alerts-{stamp}-{}", std::process::id()), batch.schema(), &batches)?;
        files += 1;
    }
    Ok(files)
}
