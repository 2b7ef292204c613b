//! SQL over the archive (DataFusion): the tables `events` and `alerts` (hive-partitioned by
//! `date` and `hour`, which prune files when a query filters on them), and views for the
//! questions audits ask most:
//! - `tool_calls`: each `tools/call` request with its answer (latency, error, masked result;
//!   for a call run as a task, the result `tasks/result` fetched, and the task id);
//! - `findings`: one row per finding (kind, category, severity, path, action, fingerprint; on plain HTTP routes the method and path);
//! - `decisions`: one row per decision (stage, action, rule, reason, status, code, client address);
//! - `approvals`: one row per approval step;
//! - `http_messages`: one row per request or response on a plain HTTP route (method, path as
//!   forwarded and masked, status, latency, masked body).

use anyhow::{Context as _, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::*;
use std::path::Path;
use std::sync::Arc;

pub const VIEWS: &[(&str, &str)] = &[
    (
        "tool_calls",
        // A call the server ran as a task (MCP 2025-11-25) is answered twice: at once with the
        // task (`CreateTaskResult`), later with the tool's result through `tasks/result`. The
        // row's answer is the result (the first `tasks/result` answer for the task; null until
        // one is fetched), its latency the time from the call to it.
        "WITH task_results AS ( \
           SELECT session, task, ts, latency_us, status, error_code, payload, id, \
                  row_number() OVER (PARTITION BY session, task ORDER BY ts, id) AS n \
           FROM events WHERE kind = 'response' AND direction = 'response' AND method = 'tasks/result' AND task IS NOT NULL) \
         SELECT q.ts, q.session, q.identity['subject'] AS subject, q.identity['agent_type'] AS agent_type, q.route, q.upstream, \
                q.tool, q.rpc_id, q.payload AS arguments, \
                CASE WHEN r.task IS NULL THEN r.ts ELSE t.ts END AS answered_at, \
                CASE WHEN r.task IS NULL THEN CAST(r.latency_us AS BIGINT) \
                     ELSE CAST(round((date_part('epoch', t.ts) - date_part('epoch', q.ts)) * 1000000) AS BIGINT) END AS latency_us, \
                CASE WHEN r.task IS NULL THEN r.status ELSE t.status END AS status, \
                CASE WHEN r.task IS NULL THEN r.error_code ELSE t.error_code END AS error_code, \
                CASE WHEN r.task IS NULL THEN r.payload ELSE t.payload END AS result, \
                q.id AS request_id, CASE WHEN r.task IS NULL THEN r.id ELSE t.id END AS response_id, r.task \
         FROM events q LEFT JOIN events r \
           ON r.session = q.session AND r.rpc_id = q.rpc_id AND (r.call IS NULL OR r.call = q.id) AND r.kind IN ('response') AND r.direction = 'response' \
         LEFT JOIN task_results t ON t.session = r.session AND t.task = r.task AND t.n = 1 \
         WHERE q.kind = 'request' AND q.direction = 'request' AND q.method = 'tools/call'",
    ),
    (
        "findings",
        "SELECT id AS event_id, ts, session, identity['subject'] AS subject, route, direction, method, tool, rpc_id, \
                f['rule'] AS rule, f['kind'] AS kind, f['category'] AS category, f['severity'] AS severity, f['path'] AS path, \
                f['action'] AS action, f['fingerprint'] AS fingerprint, f['encoding'] AS encoding, http_method, http_path, call \
         FROM (SELECT *, unnest(findings) AS f FROM events WHERE kind = 'findings')",
    ),
    (
        "decisions",
        "SELECT id AS event_id, ts, session, identity['subject'] AS subject, route, direction, method, tool, rpc_id, \
                decision['stage'] AS stage, decision['action'] AS action, decision['rule'] AS rule, decision['reason'] AS reason, \
                status, error_code, client_ip, call \
         FROM events WHERE kind = 'decision'",
    ),
    (
        "approvals",
        "SELECT id AS event_id, ts, session, identity['subject'] AS subject, route, tool, kind AS step, \
                approval['id'] AS approval_id, approval['state'] AS state, approval['by'] AS reviewer, approval['reason'] AS reason, \
                approval['waited_ms'] AS waited_ms, approval['args_digest'] AS args_digest \
         FROM events WHERE kind LIKE 'approval_%'",
    ),
    (
        "http_messages",
        "SELECT id AS event_id, ts, session, identity['subject'] AS subject, identity['agent_type'] AS agent_type, route, upstream, direction, \
                http_method, http_path, status, latency_us, bytes, payload AS body \
         FROM events WHERE kind = 'document'",
    ),
];

/// Filters are evaluated while Parquet pages are decoded (late materialisation): an audit
/// that selects calls to a few tools does not decode every row's payload first.
fn config() -> SessionConfig {
    SessionConfig::new().set_bool("datafusion.execution.parquet.pushdown_filters", true).set_bool("datafusion.execution.parquet.reorder_filters", true)
}

async fn register(ctx: &SessionContext, root: &Path, table: &str, schema: SchemaRef) -> Result<()> {
    register_as(ctx, root, table, table, schema).await
}

async fn register_as(ctx: &SessionContext, root: &Path, table: &str, name: &str, schema: SchemaRef) -> Result<()> {
    let dir = root.join(table);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let url = ListingTableUrl::parse(format!("{}/", std::fs::canonicalize(&dir)?.display()))?;
    let opts = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".into(), DataType::Utf8), ("hour".into(), DataType::Utf8)]);
    let cfg = ListingTableConfig::new(url).with_listing_options(opts).with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(cfg)?))?;
    Ok(())
}

/// The archive schema as queries see it: every string column (also inside structs and lists)
/// as `Utf8View`. Parquet pages decode into views without copying each string into one
/// buffer, which makes scans of `payload` and filters on text columns markedly cheaper
/// (each chain rule ran 1.1–1.5× faster; see the README's analyzer benchmark).
pub fn view_schema(schema: &datafusion::arrow::datatypes::Schema) -> SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema};
    fn ty(t: &DataType) -> DataType {
        match t {
            DataType::Utf8 => DataType::Utf8View,
            DataType::Struct(fs) => DataType::Struct(fs.iter().map(|f| Arc::new(field(f))).collect()),
            DataType::List(f) => DataType::List(Arc::new(field(f))),
            other => other.clone(),
        }
    }
    fn field(f: &Field) -> Field {
        f.clone().with_data_type(ty(f.data_type()))
    }
    Arc::new(Schema::new_with_metadata(schema.fields().iter().map(|f| Arc::new(field(f))).collect::<Vec<_>>(), schema.metadata().clone()))
}

/// Decoded batches (plain `Utf8`) cast to `schema` (a [`view_schema`]), to sit beside the archive.
fn as_views(batches: &[RecordBatch], schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let cast = |b: &RecordBatch| -> Result<RecordBatch> {
        let cols = b.columns().iter().zip(schema.fields()).map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type())).collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    };
    batches.iter().map(cast).collect()
}

/// A session over the archive with its tables and views.
pub async fn context(root: &Path) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(config().with_information_schema(true));
    let schema = view_schema(&sluice_schema::arrow::schema());
    register(&ctx, root, "events", schema.clone()).await?;
    register(&ctx, root, "alerts", Arc::new(crate::alerts_schema())).await?;
    add_views(&ctx).await?;
    Ok(ctx)
}

/// The event schema plus the partition columns `date` and `hour`, as the `events` table has it.
pub fn partitioned_schema() -> SchemaRef {
    let mut fields: Vec<_> = sluice_schema::arrow::schema().fields().iter().cloned().collect();
    fields.push(Arc::new(datafusion::arrow::datatypes::Field::new("date", DataType::Utf8, false)));
    fields.push(Arc::new(datafusion::arrow::datatypes::Field::new("hour", DataType::Utf8, false)));
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

/// A session for detection in continuous mode: `events` is the archive from the hour `since`
/// on (older partitions are pruned, not read) plus `pending`, the events decoded but not yet
/// written to files (in [`partitioned_schema`]); `alerts` is the whole alerts table.
pub async fn context_live(root: &Path, since: crate::archive::Hour, pending: Vec<RecordBatch>) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(config());
    let schema = view_schema(&sluice_schema::arrow::schema());
    register_as(&ctx, root, "events", "events_archive", schema.clone()).await?;
    // The partition columns stay `Utf8`, as the listing table has them.
    let partitions = partitioned_schema();
    let fields: Vec<_> = schema.fields().iter().chain(&partitions.fields()[schema.fields().len()..]).cloned().collect();
    let pending_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    let pending = as_views(&pending, &pending_schema)?;
    ctx.register_table("events_pending", Arc::new(datafusion::datasource::MemTable::try_new(pending_schema, vec![pending])?))?;
    register(&ctx, root, "alerts", Arc::new(crate::alerts_schema())).await?;
    let (date, hour) = since.partition();
    let events = format!(
        "SELECT * FROM events_archive WHERE date > '{date}' OR (date = '{date}' AND hour >= '{hour}') \
         UNION ALL SELECT * FROM events_pending"
    );
    let df = ctx.sql(&events).await.context("the live events view")?;
    ctx.register_table("events", df.into_view())?;
    add_views(&ctx).await?;
    Ok(ctx)
}

/// A session over events held in memory (chain rule tests, replays of a spool).
pub async fn context_in_memory(events: Vec<RecordBatch>) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    let schema = view_schema(&sluice_schema::arrow::schema());
    let events = as_views(&events, &schema)?;
    ctx.register_table("events", Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![events])?))?;
    let alerts = Arc::new(crate::alerts_schema());
    ctx.register_table("alerts", Arc::new(datafusion::datasource::MemTable::try_new(alerts, vec![vec![]])?))?;
    add_views(&ctx).await?;
    Ok(ctx)
}

async fn add_views(ctx: &SessionContext) -> Result<()> {
    for (name, sql) in VIEWS {
        let df = ctx.sql(sql).await.with_context(|| format!("view {name}"))?;
        ctx.register_table(*name, df.into_view())?;
    }
    Ok(())
}

/// Run one query; the batches of its result.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let df = ctx.sql(sql).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    Ok((schema, df.collect().await?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

/// Write a result as a table, CSV or JSON lines (stdout), or Parquet (`out`).
pub fn output(schema: SchemaRef, batches: &[RecordBatch], format: Format, out: Option<&Path>) -> Result<()> {
    use std::io::Write;
    let mut sink: Box<dyn Write> = match (format, out) {
        (Format::Parquet, None) => anyhow::bail!("--format parquet needs --out FILE"),
        (Format::Parquet, Some(_)) => Box::new(std::io::sink()),
        (_, Some(p)) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        (_, None) => Box::new(std::io::stdout().lock()),
    };
    match format {
        Format::Table => writeln!(sink, "{}", datafusion::arrow::util::pretty::pretty_format_batches(batches)?)?,
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(sink);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(sink);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            let p = out.unwrap_or(Path::new("out.parquet"));
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
            crate::archive::write_file(dir, name, schema, batches)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;

    /// An empty archive for one test: its root, an hour partition of `events`, the schema.
    fn scratch_archive(name: &str) -> (std::path::PathBuf, std::path::PathBuf, SchemaRef) {
        let root = std::env::temp_dir().join(format!("sluice-query-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("events/date=2026-11-23/hour=13");
        (root, dir, Arc::new(sluice_schema::arrow::schema()))
    }

    /// Fields are only ever added to the event, so the archive holds files written before a
    /// column existed: they read with that column null, beside newer files that have it.
    #[tokio::test]
    async fn files_archived_before_a_column_was_added_read_it_as_null() {
        let (root, dir, schema) = scratch_archive("compat");
        let head = r#""v":1,"ts":1795957200000000,"instance":"gw","route":"api","direction":"response","status":200"#;
        let old = crate::decode::decode(&schema, &[format!(r#"{{"id":"01KAAAAAAAAAAAAAAAAAAAAAAA","kind":"response",{head}}}"#)]).unwrap();
        // The file as the first release wrote it: without the plain HTTP, client and task columns.
        let keep: Vec<usize> = (0..schema.fields().len()).filter(|&i| !schema.field(i).name().starts_with("http_") && !["client_ip", "task"].contains(&schema.field(i).name().as_str())).collect();
        let old = old.project(&keep).unwrap();
        crate::archive::write_file(&dir, "old", old.schema(), &[old]).unwrap();
        let new = crate::decode::decode(&schema, &[format!(r#"{{"id":"01KBBBBBBBBBBBBBBBBBBBBBBB","kind":"document",{head},"http_method":"GET","http_path":"/api/x?q=1","client_ip":"10.0.0.7","task":"t-1"}}"#)]).unwrap();
        crate::archive::write_file(&dir, "new", schema.clone(), &[new]).unwrap();

        let ctx = context(&root).await.unwrap();
        let (_, b) = run(&ctx, "SELECT kind, http_method, http_path, client_ip, task FROM events ORDER BY id").await.unwrap();
        let b = datafusion::arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
        let col = |i: usize| -> Vec<Option<String>> {
            let c = datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            c.as_string::<i32>().iter().map(|v| v.map(str::to_owned)).collect()
        };
        assert_eq!(col(0), [Some("response".to_owned()), Some("document".to_owned())]);
        assert_eq!(col(1), [None, Some("GET".to_owned())]);
        assert_eq!(col(2), [None, Some("/api/x?q=1".to_owned())]);
        assert_eq!(col(3), [None, Some("10.0.0.7".to_owned())]);
        assert_eq!(col(4), [None, Some("t-1".to_owned())]);
        let (_, b) = run(&ctx, "SELECT http_method, http_path, status FROM http_messages").await.unwrap();
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "the view holds the plain HTTP message only");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A field of an absent record (the identity of an anonymous call, the decision of a
    /// message) is null in SQL — as DuckDB reads it — not an empty string, both archived and
    /// in memory; files written when those fields were required still read, unchanged.
    #[tokio::test]
    async fn fields_of_absent_records_are_null() {
        use datafusion::arrow::datatypes::{Field, Fields, Schema};
        let (root, dir, schema) = scratch_archive("nulls");
        let head = r#""v":1,"ts":1795957200000000,"instance":"gw""#;
        let anonymous = format!(r#"{{"id":"01KBBBBBBBBBBBBBBBBBBBBBBB","kind":"request",{head}}}"#);
        let decided = format!(r#"{{"id":"01KAAAAAAAAAAAAAAAAAAAAAAA","kind":"decision",{head},"identity":{{"subject":"ann"}},"decision":{{"action":"deny","stage":"policy"}}}}"#);
        // The older file: the same columns with the records' required fields not nullable.
        let required = |f: &Field| -> Field {
            match f.data_type() {
                DataType::Struct(children) if ["identity", "decision", "approval", "pin"].contains(&f.name().as_str()) => {
                    let kids: Fields = children.iter().map(|c| c.as_ref().clone().with_nullable(c.is_nullable() && !matches!(c.name().as_str(), "subject" | "action" | "stage" | "id" | "state" | "args_digest" | "tool" | "change"))).collect();
                    Field::new(f.name(), DataType::Struct(kids), true)
                }
                _ => f.clone(),
            }
        };
        let old_schema = Arc::new(Schema::new(schema.fields().iter().map(|f| required(f)).collect::<Vec<_>>()));
        assert_ne!(old_schema, schema);
        let old = crate::decode::decode(&schema, &[&decided]).unwrap();
        let cols = old.columns().iter().zip(old_schema.fields()).map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()).unwrap()).collect();
        let old = RecordBatch::try_new(old_schema.clone(), cols).unwrap();
        crate::archive::write_file(&dir, "old", old_schema, &[old]).unwrap();
        let new = crate::decode::decode(&schema, &[&anonymous]).unwrap();
        crate::archive::write_file(&dir, "new", schema.clone(), &[new]).unwrap();

        let sql = "SELECT identity['subject'] AS s, decision['stage'] AS d FROM events ORDER BY id";
        let read = |b: Vec<RecordBatch>| -> Vec<(Option<String>, Option<String>)> {
            let b = datafusion::arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
            let col = |i: usize| datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            let (s, d) = (col(0), col(1));
            s.as_string::<i32>().iter().zip(d.as_string::<i32>().iter()).map(|(s, d)| (s.map(str::to_owned), d.map(str::to_owned))).collect()
        };
        let want = vec![(Some("ann".to_owned()), Some("policy".to_owned())), (None, None)];
        let (_, b) = run(&context(&root).await.unwrap(), sql).await.unwrap();
        assert_eq!(read(b), want, "archived");
        let mem = context_in_memory(vec![crate::decode::decode(&schema, &[&decided, &anonymous]).unwrap()]).await.unwrap();
        let (_, b) = run(&mem, sql).await.unwrap();
        assert_eq!(read(b), want, "in memory");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A call the server ran as a task: its row in `tool_calls` holds the result the first
    /// `tasks/result` fetched (not the `CreateTaskResult`), the time from the call to it, and
    /// the task; a task whose result was never fetched has no answer yet; a task of another
    /// session with the same id is not this call's; a call answered at once is unchanged.
    #[tokio::test]
    async fn a_call_run_as_a_task_is_answered_by_its_tasks_result() {
        let schema = Arc::new(sluice_schema::arrow::schema());
        let t0: u64 = 1_795_957_200_000_000;
        let mut n = 0;
        let mut ev = |kind: &str, dir: &str, session: &str, method: &str, rpc: &str, at: u64, extra: &str| {
            n += 1;
            format!(
                r#"{{"v":1,"id":"01KA{n:022}","ts":{},"kind":"{kind}","instance":"gw","session":"{session}","direction":"{dir}","method":"{method}","rpc_id":"{rpc}"{extra}}}"#,
                t0 + at
            )
        };
        let docs = vec![
            ev("request", "request", "s1", "tools/call", "1", 0, r#","tool":"research","payload":{"name":"research"}"#),
            ev("response", "response", "s1", "tools/call", "1", 5_000, r#","tool":"research","latency_us":5000,"status":200,"task":"T1","payload":{"task":{"taskId":"T1"}}"#),
            ev("request", "request", "s1", "tasks/result", "2", 10_000, r#","tool":"research","task":"T1""#),
            ev("response", "response", "s1", "tasks/result", "2", 2_000_000, r#","tool":"research","latency_us":1990000,"status":200,"task":"T1","payload":{"content":"findings"}"#),
            ev("response", "response", "s1", "tasks/result", "3", 3_000_000, r#","tool":"research","latency_us":10,"status":200,"task":"T1","payload":{"content":"again"}"#),
            ev("response", "response", "s2", "tasks/result", "9", 1_000_000, r#","tool":"research","status":200,"task":"T1","payload":{"content":"other session"}"#),
            ev("request", "request", "s1", "tools/call", "4", 4_000_000, r#","tool":"research""#),
            ev("response", "response", "s1", "tools/call", "4", 4_001_000, r#","tool":"research","latency_us":1000,"status":200,"task":"T2","payload":{"task":{"taskId":"T2"}}"#),
            ev("request", "request", "s1", "tools/call", "5", 5_000_000, r#","tool":"add""#),
            ev("response", "response", "s1", "tools/call", "5", 5_000_300, r#","tool":"add","latency_us":300,"status":200,"payload":{"content":"3"}"#),
        ];
        let ctx = context_in_memory(vec![crate::decode::decode(&schema, &docs).unwrap()]).await.unwrap();
        let (_, b) = run(&ctx, "SELECT rpc_id, task, CAST(latency_us AS VARCHAR), result, CAST(answered_at IS NULL AS VARCHAR) FROM tool_calls ORDER BY ts").await.unwrap();
        let b = datafusion::arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
        let col = |i: usize| -> Vec<Option<String>> {
            let c = datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            c.as_string::<i32>().iter().map(|v| v.map(str::to_owned)).collect()
        };
        let some = |v: &[&str]| v.iter().map(|s| (!s.is_empty()).then(|| s.to_string())).collect::<Vec<_>>();
        assert_eq!(col(0), some(&["1", "4", "5"]));
        assert_eq!(col(1), some(&["T1", "T2", ""]));
        assert_eq!(col(2), some(&["2000000", "", "300"]), "latency: call to result");
        assert_eq!(col(3), some(&[r#"{"content":"findings"}"#, "", r#"{"content":"3"}"#]));
        assert_eq!(col(4), some(&["false", "true", "false"]));
    }

    /// Stateless requests (MCP 2026-07-28) of one caller are one session whose JSON-RPC ids
    /// repeat (every client process counts from 1, and several run at once): each call is
    /// paired with its own answer by `call`, not with every answer that has its id. Archives
    /// from before `call` pair by id as they did.
    #[tokio::test]
    async fn calls_pair_with_their_own_answers_when_ids_repeat() {
        let schema = Arc::new(sluice_schema::arrow::schema());
        let t0: u64 = 1_795_957_200_000_000;
        let ev = |id: &str, kind: &str, dir: &str, at: u64, extra: &str| {
            format!(r#"{{"v":1,"id":"{id}","ts":{},"kind":"{kind}","instance":"gw","session":"s1","direction":"{dir}","method":"tools/call","rpc_id":"1","tool":"t"{extra}}}"#, t0 + at)
        };
        let docs = vec![
            // Two client processes, both with id 1, in flight at once; their answers cross.
            ev("01KA0000000000000000000001", "request", "request", 0, r#","payload":{"arguments":{"n":1}}"#),
            ev("01KA0000000000000000000002", "request", "request", 10, r#","payload":{"arguments":{"n":2}}"#),
            ev("01KA0000000000000000000003", "response", "response", 20, r#","call":"01KA0000000000000000000002","payload":{"content":"two"}"#),
            ev("01KA0000000000000000000004", "response", "response", 30, r#","call":"01KA0000000000000000000001","payload":{"content":"one"}"#),
        ];
        let ctx = context_in_memory(vec![crate::decode::decode(&schema, &docs).unwrap()]).await.unwrap();
        let (_, b) = run(&ctx, "SELECT arguments, result FROM tool_calls ORDER BY ts").await.unwrap();
        let b = datafusion::arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
        let col = |i: usize| -> Vec<String> {
            let c = datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap();
            c.as_string::<i32>().iter().map(|v| v.unwrap_or("").to_owned()).collect()
        };
        assert_eq!(col(0), [r#"{"arguments":{"n":1}}"#, r#"{"arguments":{"n":2}}"#], "one row per call");
        assert_eq!(col(1), [r#"{"content":"one"}"#, r#"{"content":"two"}"#], "each with its own answer");
    }
}
