//! `sluice-analyzer`: archive session events as Parquet, query them with SQL, replay sessions.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice_analyzer::{chains, ingest, query, replay, run};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice-analyzer", version, about = "Sluice's analyzer: Parquet archive, SQL audits, chain detections, reports, session replay")]
struct Cli {
    /// The archive directory.
    #[arg(long, short, global = true, default_value = "/var/lib/sluice/archive")]
    archive: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where events come from: a spool directory or the Kafka events topic.
#[derive(clap::Args)]
struct From {
    /// A gateway's spool directory (read from the archive's saved cursor on).
    #[arg(long, required_unless_present = "kafka", conflicts_with = "kafka")]
    spool: Option<PathBuf>,
    /// Kafka brokers (`host:port,…`).
    #[arg(long)]
    kafka: Option<String>,
    #[arg(long, default_value = "sluice.events")]
    topic: String,
    #[arg(long, default_value = "sluice-analyzer")]
    group: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Archive session events from a gateway's spool directory (from where the last run
    /// stopped) or from the Kafka events topic (with a consumer group, until caught up).
    Ingest {
        #[command(flatten)]
        from: From,
        /// Stop after this long without a message even if not caught up (seconds).
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
        /// Rows buffered before files are written (one file per hour partition).
        #[arg(long, default_value_t = 1_000_000)]
        rows_per_file: usize,
    },
    /// Run SQL over the archive: tables `events`, `alerts`; views `tool_calls`, `findings`,
    /// `decisions`, `approvals`.
    Sql {
        query: String,
        #[arg(long, value_enum, default_value = "table")]
        format: query::Format,
        /// Write the result here (required for parquet).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the chain detections over the archive; new alerts go to the archive's `alerts`
    /// table, to stdout (JSON lines) and, with --kafka, to the alerts topic.
    Chains {
        /// More rule files (`*.sql`) besides the built-in ones.
        #[arg(long)]
        rules: Vec<PathBuf>,
        /// Only the rules from --rules.
        #[arg(long)]
        no_builtin: bool,
        /// Kafka brokers for the alerts topic.
        #[arg(long)]
        kafka: Option<String>,
        #[arg(long, default_value = "sluice.alerts")]
        topic: String,
        /// List the rules and exit.
        #[arg(long)]
        list: bool,
        /// Print each rule's wall time and result rows (JSON lines on stderr).
        #[arg(long)]
        timings: bool,
    },
    /// Print the SQL of the views (`tool_calls`, `findings`, …) as JSON, to define the same
    /// views in another engine over the archive's files.
    Views,
    /// An audit report of a time range (RFC 3339 times, `--to` exclusive).
    Report {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_parser = ["html", "md", "json"], default_value = "html")]
        format: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Continuous mode: ingest as events arrive (Kafka consumer group, or a spool directory as
    /// it grows), run the chain rules over recent events every --detect-secs, send new alerts
    /// to the alerts topic; lag and totals on --metrics. Stops cleanly on SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        from: From,
        /// Alerts go to this topic (with --kafka).
        #[arg(long, default_value = "sluice.alerts")]
        alerts_topic: String,
        /// Do not send alerts to Kafka (they still go to the archive and stdout).
        #[arg(long)]
        no_alerts_topic: bool,
        /// More rule files (`*.sql`) besides the built-in ones.
        #[arg(long)]
        rules: Vec<PathBuf>,
        /// Only the rules from --rules.
        #[arg(long)]
        no_builtin: bool,
        /// Write files at least this often while events arrive (seconds).
        #[arg(long, default_value_t = 60)]
        flush_secs: u64,
        /// Run the chain rules this often when new events arrived (seconds).
        #[arg(long, default_value_t = 5)]
        detect_secs: u64,
        /// Hours of archive the chain rules look back over, besides unwritten events.
        #[arg(long, default_value_t = 2)]
        lookback_hours: i64,
        #[arg(long, default_value_t = 1_000_000)]
        rows_per_file: usize,
        /// Serve Prometheus metrics (lag, totals) here, e.g. 127.0.0.1:9464.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Merge an hour partition's files into one once none was written for this many
        /// minutes (0: never).
        #[arg(long, default_value_t = 60)]
        compact_after_mins: u64,
    },
    /// Merge the small files of each hour partition (events and alerts) into one, once none
    /// was written for --settled-mins; rows deduplicated by id, files of another version left.
    Compact {
        #[arg(long, default_value_t = 60)]
        settled_mins: u64,
        /// Only hours holding at least this many files.
        #[arg(long, default_value_t = 2)]
        min_files: usize,
    },
    /// Retention: remove whole days of the archive before a date.
    Prune {
        /// Keep this many days (UTC dates), today included.
        #[arg(long, required_unless_present = "before", conflicts_with = "before")]
        keep_days: Option<u64>,
        /// Remove the days before this date (YYYY-MM-DD, UTC).
        #[arg(long)]
        before: Option<String>,
        /// Tables to prune (events, alerts).
        #[arg(long, value_delimiter = ',', default_value = "events")]
        tables: Vec<String>,
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A session's transcript in order (gateway session id); or, with --subject, everything
    /// one caller did in a period, across sessions and plain HTTP routes.
    Replay {
        #[arg(required_unless_present = "subject", conflicts_with = "subject")]
        session: Option<String>,
        /// The caller (identity subject) whose activity to replay.
        #[arg(long)]
        subject: Option<String>,
        /// With --subject: from this time (RFC 3339), inclusive.
        #[arg(long, requires = "subject")]
        from: Option<String>,
        /// With --subject: until this time (RFC 3339), exclusive.
        #[arg(long, requires = "subject")]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-analyzer: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Ingest { from: From { spool, kafka, topic, group }, idle_secs, rows_per_file } => {
            let st = match (spool, kafka) {
                (Some(dir), _) => ingest::from_spool(&dir, &cli.archive, rows_per_file)?,
                (None, Some(brokers)) => ingest::from_kafka(&brokers, &topic, &group, &cli.archive, rows_per_file, std::time::Duration::from_secs(idle_secs))?,
                (None, None) => anyhow::bail!("give --spool DIR or --kafka BROKERS"),
            };
            println!("{}", serde_json::to_string(&st)?);
        }
        Cmd::Sql { query: q, format, out } => {
            let ctx = query::context(&cli.archive).await?;
            let (schema, batches) = query::run(&ctx, &q).await?;
            query::output(schema, &batches, format, out.as_deref())?;
        }
        Cmd::Views => {
            let m: serde_json::Map<String, serde_json::Value> = query::VIEWS.iter().map(|(n, q)| ((*n).to_owned(), (*q).into())).collect();
            println!("{}", serde_json::Value::Object(m));
        }
        Cmd::Chains { rules, no_builtin, kafka, topic, list, timings } => {
            let rules = chains::load(!no_builtin, &rules)?;
            if list {
                for r in &rules {
                    println!("{:<28} {:<9} {}  ({})", r.id, r.severity, r.summary, r.source);
                }
                return Ok(());
            }
            let ctx = query::context(&cli.archive).await?;
            let alerts = chains::run_timed(&ctx, &rules, &mut |r, took, rows| {
                if timings {
                    eprintln!("{}", serde_json::json!({"rule": r.id, "ms": took.as_secs_f64() * 1e3, "rows": rows}));
                }
            })
            .await?;
            // Delivered before archived: an archived alert is never raised again.
            if let Some(brokers) = kafka {
                sluice_analyzer::alerts::send(&brokers, &topic, &alerts)?;
            }
            chains::archive(&cli.archive, &alerts)?;
            for a in &alerts {
                println!("{}", serde_json::to_string(a)?);
            }
            eprintln!("sluice-analyzer: {} rule(s), {} new alert(s)", rules.len(), alerts.len());
        }
        Cmd::Compact { settled_mins, min_files } => {
            let settled = std::time::Duration::from_secs(settled_mins * 60);
            let events: datafusion::arrow::datatypes::SchemaRef = std::sync::Arc::new(sluice_schema::arrow::schema());
            let alerts: datafusion::arrow::datatypes::SchemaRef = std::sync::Arc::new(sluice_analyzer::alerts_schema());
            for (table, schema) in [("events", &events), ("alerts", &alerts)] {
                let c = sluice_analyzer::maintain::compact(&cli.archive, table, schema, settled, min_files)?;
                println!("{}", serde_json::json!({"table": table, "compacted": c}));
            }
        }
        Cmd::Prune { keep_days, before, tables, dry_run } => {
            for t in &tables {
                anyhow::ensure!(t == "events" || t == "alerts", "--tables: \"{t}\" is not a table of the archive; write events, alerts or both");
            }
            let before = match (keep_days, before) {
                (Some(0), _) => anyhow::bail!("--keep-days 0 would remove today's events too; keep at least 1 (or give --before)"),
                (Some(days), _) => sluice_analyzer::maintain::days_ago(days - 1),
                (None, Some(b)) => b,
                (None, None) => anyhow::bail!("give --keep-days N or --before YYYY-MM-DD"),
            };
            let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
            for p in sluice_analyzer::maintain::prune(&cli.archive, &tables, &before, dry_run)? {
                println!("{}", serde_json::json!({"table": p.table, "date": p.date, "files": p.files, "bytes": p.bytes, "removed": !dry_run}));
            }
        }
        Cmd::Run { from: From { spool, kafka, topic, group }, alerts_topic, no_alerts_topic, rules, no_builtin, flush_secs, detect_secs, lookback_hours, rows_per_file, metrics, compact_after_mins } => {
            let rules = chains::load(!no_builtin, &rules)?;
            let alerts_to = kafka.clone().filter(|_| !no_alerts_topic).map(|b| (b, alerts_topic));
            let source = match (spool, kafka) {
                (Some(dir), _) => run::Source::Spool(dir),
                (None, Some(brokers)) => run::Source::Kafka { brokers, topic, group },
                (None, None) => anyhow::bail!("give --spool DIR or --kafka BROKERS"),
            };
            let opts = run::Opts {
                source,
                alerts_to,
                rules,
                flush: std::time::Duration::from_secs(flush_secs.max(1)),
                detect: std::time::Duration::from_secs(detect_secs.max(1)),
                rows_per_file,
                lookback_hours,
                metrics,
                compact_after: (compact_after_mins > 0).then(|| std::time::Duration::from_secs(compact_after_mins * 60)),
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            let rt = tokio::runtime::Handle::current();
            let root = cli.archive.clone();
            tokio::task::spawn_blocking(move || run::run(&root, opts, stop, rt)).await??;
        }
        Cmd::Report { from, to, format, out } => {
            let ctx = query::context(&cli.archive).await?;
            let r = sluice_analyzer::report::build(&ctx, &from, &to).await?;
            let text = match format.as_str() {
                "json" => serde_json::to_string_pretty(&r)?,
                "md" => sluice_analyzer::report::markdown(&r),
                _ => sluice_analyzer::report::html(&r),
            };
            match out {
                Some(p) => std::fs::write(&p, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?,
                None => print!("{text}"),
            }
        }
        Cmd::Replay { session, subject, from, to, json } => {
            let ctx = query::context(&cli.archive).await?;
            let rows = match (&session, &subject) {
                (Some(sid), _) => replay::events(&ctx, sid).await?,
                (None, Some(who)) => replay::subject_events(&ctx, who, from.as_deref(), to.as_deref()).await?,
                (None, None) => anyhow::bail!("give a session id, or --subject"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", replay::text(&rows, subject.is_some()));
            }
        }
    }
    Ok(())
}
