//! `run`: continuous mode. Events are consumed (a Kafka consumer group, or a spool directory
//! as it grows), decoded and deduplicated as they arrive, written to the archive when a file
//! is due (`rows_per_file` rows, or the oldest unwritten event waited `flush`), and the chain
//! rules run every `detect` over the recent archive plus the events not yet written — so an
//! alert does not wait for a file. Source positions (consumer offsets, the spool cursor) are
//! saved only after the files holding everything before them are durable.
//!
//! Several instances in one consumer group share the topic's partitions. Events are keyed by
//! the gateway's session id, so a session's events all reach one instance and the per-session
//! chain rules see whole sessions. Before a partition moves, its owner writes what it holds
//! and commits; the new owner re-reads its dedup memory from the archive.
//!
//! `/metrics` (Prometheus text) on `--metrics ADDR`: consumer lag per partition, events not
//! yet in files and how long the oldest waited, totals, detection runs and their duration.

use crate::chains::{self, Rule};
use crate::ingest::{self, lock, Pipeline, Polled, SpoolTail};
use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub enum Source {
    Kafka { brokers: String, topic: String, group: String },
    Spool(PathBuf),
}

pub struct Opts {
    pub source: Source,
    /// Alerts also go here (brokers, topic).
    pub alerts_to: Option<(String, String)>,
    pub rules: Vec<Rule>,
    /// Files are written at least this often while events arrive.
    pub flush: Duration,
    /// Chain rules run this often when new events arrived.
    pub detect: Duration,
    pub rows_per_file: usize,
    /// How far back (hours of archive) detection looks, besides the unwritten events.
    pub lookback_hours: i64,
    pub metrics: Option<SocketAddr>,
    /// Merge each hour partition's files once none was written for this long (`None`: never).
    pub compact_after: Option<Duration>,
}

/// What `/metrics` shows.
#[derive(Default)]
pub struct Metrics {
    read: AtomicU64,
    written: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    files: AtomicU64,
    pending: AtomicU64,
    pending_age_ms: AtomicU64,
    alerts: AtomicU64,
    detect_runs: AtomicU64,
    detect_errors: AtomicU64,
    detect_last_ms: AtomicU64,
    /// Consumer lag per partition (high watermark − position), refreshed every few seconds.
    lag: Mutex<BTreeMap<i32, i64>>,
    /// Records the spool holds past the position read (spool source).
    spool_lag_bytes: AtomicU64,
    compacted_hours: AtomicU64,
    compacted_files: AtomicU64,
    compact_errors: AtomicU64,
}

impl Metrics {
    fn update(&self, p: &Pipeline) {
        self.read.store(p.st.read, Ordering::Relaxed);
        self.written.store(p.st.written, Ordering::Relaxed);
        self.duplicates.store(p.st.duplicates, Ordering::Relaxed);
        self.rejected.store(p.st.rejected, Ordering::Relaxed);
        self.files.store(p.st.files, Ordering::Relaxed);
        self.pending.store(p.w.pending_rows() as u64, Ordering::Relaxed);
        self.pending_age_ms.store(p.oldest_age().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let g = |s: &mut String, name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        g(&mut s, "sluice_analyzer_events_read_total", "counter", "Events consumed.", n(&self.read));
        g(&mut s, "sluice_analyzer_events_archived_total", "counter", "Events written to Parquet files.", n(&self.written));
        g(&mut s, "sluice_analyzer_events_duplicate_total", "counter", "Events dropped because the archive already held their id.", n(&self.duplicates));
        g(&mut s, "sluice_analyzer_events_rejected_total", "counter", "Documents that are not session events, set aside in ARCHIVE/_rejected/ instead of archived.", n(&self.rejected));
        g(&mut s, "sluice_analyzer_files_written_total", "counter", "Parquet files written.", n(&self.files));
        g(&mut s, "sluice_analyzer_pending_events", "gauge", "Events consumed but not yet in files.", n(&self.pending));
        g(&mut s, "sluice_analyzer_pending_age_seconds", "gauge", "How long the oldest event not yet in a file has waited.", n(&self.pending_age_ms) / 1000.0);
        g(&mut s, "sluice_analyzer_alerts_total", "counter", "New chain alerts raised.", n(&self.alerts));
        g(&mut s, "sluice_analyzer_detect_runs_total", "counter", "Chain detection runs.", n(&self.detect_runs));
        g(&mut s, "sluice_analyzer_detect_errors_total", "counter", "Chain detection runs that failed.", n(&self.detect_errors));
        g(&mut s, "sluice_analyzer_detect_duration_seconds", "gauge", "Duration of the last chain detection run.", n(&self.detect_last_ms) / 1000.0);
        g(&mut s, "sluice_analyzer_spool_lag_bytes", "gauge", "Spool bytes not yet read (spool source).", n(&self.spool_lag_bytes));
        g(&mut s, "sluice_analyzer_compacted_hours_total", "counter", "Hour partitions whose files were merged into one.", n(&self.compacted_hours));
        g(&mut s, "sluice_analyzer_compacted_files_total", "counter", "Small files merged away by compaction.", n(&self.compacted_files));
        g(&mut s, "sluice_analyzer_compact_errors_total", "counter", "Compaction passes that failed (retried at the next).", n(&self.compact_errors));
        let lag = lock(&self.lag);
        let _ = writeln!(s, "# HELP sluice_analyzer_consumer_lag_events Messages in the partition not yet consumed (Kafka source).\n# TYPE sluice_analyzer_consumer_lag_events gauge");
        for (p, l) in lag.iter() {
            let _ = writeln!(s, "sluice_analyzer_consumer_lag_events{{partition=\"{p}\"}} {l}");
        }
        g(&mut s, "sluice_analyzer_assigned_partitions", "gauge", "Partitions this instance owns (Kafka source).", lag.len() as f64);
        s
    }
}

/// Serve `/metrics` and `/healthz` from a thread of its own.
fn serve(addr: SocketAddr, m: Arc<Metrics>) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding the metrics listener {addr}"))?;
    eprintln!("sluice-analyzer: metrics on http://{}/metrics", l.local_addr()?);
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in l.incoming().flatten() {
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = match head.split_whitespace().nth(1) {
                Some("/metrics") => ("200 OK", m.render()),
                Some("/healthz") => ("200 OK", "ok\n".to_owned()),
                _ => ("404 Not Found", "try /metrics\n".to_owned()),
            };
            let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    })?;
    Ok(())
}

/// Run until `stop` is set; then write what is pending, save positions, detect once more.
pub fn run(root: &Path, o: Opts, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = o.metrics {
        serve(addr, metrics.clone())?;
    }
    let sink = match &o.alerts_to {
        Some((b, t)) => Some(crate::alerts::Sink::new(b, t)?),
        None => None,
    };
    let mut p = Pipeline::new(root, o.rows_per_file);
    p.w.keep_unwritten = true; // the detector reads events before they are in files
    let pipeline = Arc::new(Mutex::new(p));
    let mut detector = Detector { root: root.to_owned(), rules: o.rules.clone(), lookback_hours: o.lookback_hours, sink, metrics: metrics.clone(), rt, last: Instant::now(), fresh: 0 };
    let mut compactor = o.compact_after.map(|settled| Compactor { root: root.to_owned(), settled, last: None, metrics: metrics.clone(), unchanged: Default::default() });
    match &o.source {
        Source::Kafka { brokers, topic, group } => {
            let c = ingest::consumer(brokers, topic, group, pipeline.clone())?;
            let next = c.context().next.clone();
            let mut lag_at = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Polled::Message = ingest::poll(&c, Duration::from_millis(100)).with_context(|| format!("from {brokers}"))? {
                    // Drain what is already there before the bookkeeping below.
                    for _ in 0..4096 {
                        if !matches!(ingest::poll(&c, Duration::ZERO)?, Polled::Message) {
                            break;
                        }
                    }
                }
                if lock(&pipeline).due(o.flush) {
                    ingest::flush_and_commit(&c, &pipeline, &next, topic)?;
                }
                detector.maybe(&pipeline, o.detect)?;
                if let Some(c) = compactor.as_mut() {
                    c.maybe();
                }
                if lag_at.elapsed() >= Duration::from_secs(2) {
                    lag_at = Instant::now();
                    *lock(&metrics.lag) = consumer_lag(&c, topic);
                }
                metrics.update(&lock(&pipeline));
            }
            ingest::flush_and_commit(&c, &pipeline, &next, topic)?;
            c.unsubscribe();
        }
        Source::Spool(dir) => {
            let mut tail = SpoolTail::open(dir, root)?;
            let mut lag_at = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let n = tail.read(ingest::CHUNK, &mut |doc| lock(&pipeline).push(doc))?;
                if lock(&pipeline).due(o.flush) {
                    lock(&pipeline).flush()?;
                    tail.save()?;
                }
                detector.maybe(&pipeline, o.detect)?;
                if let Some(c) = compactor.as_mut() {
                    c.maybe();
                }
                metrics.update(&lock(&pipeline));
                if lag_at.elapsed() >= Duration::from_secs(2) {
                    lag_at = Instant::now();
                    metrics.spool_lag_bytes.store(tail.behind().unwrap_or(0), Ordering::Relaxed);
                }
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            lock(&pipeline).flush()?;
            tail.save()?;
        }
    }
    detector.fresh += lock(&pipeline).take_fresh();
    if detector.fresh > 0 {
        if let Err(e) = detector.detect(&pipeline) {
            // The events are archived; `chains` over the archive picks the alerts up later.
            eprintln!("sluice-analyzer: the last chain detection failed: {e:#} (run `sluice-analyzer chains` to finish it)");
        }
    }
    let st = lock(&pipeline).st.clone();
    eprintln!("sluice-analyzer: stopped; {}", serde_json::to_string(&st)?);
    Ok(())
}

/// High watermark − position per assigned partition.
fn consumer_lag(c: &BaseConsumer<ingest::GroupCtx>, topic: &str) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    let Ok(pos) = c.position() else { return out };
    // Until a partition's first message arrives its position is unknown: the group's
    // committed offset is where consumption will start (fetched only when needed).
    let mut committed = None;
    for e in pos.elements_for_topic(topic) {
        let Ok((low, high)) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(1)) else { continue };
        let at = match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => {
                let tpl = committed.get_or_insert_with(|| c.committed(Duration::from_secs(1)).ok());
                match tpl.as_ref().and_then(|t| t.find_partition(topic, e.partition())).map(|x| x.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => o,
                    _ => low,
                }
            }
        };
        out.insert(e.partition(), (high - at).max(0));
    }
    out
}

/// Merges settled hour partitions (see [`crate::maintain`]) every few minutes, between
/// ingest steps; a failure is logged, counted and retried at the next pass.
struct Compactor {
    root: PathBuf,
    settled: Duration,
    last: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Per table, the hours with nothing to merge (not looked at again until they change).
    unchanged: [crate::maintain::Unchanged; 2],
}

impl Compactor {
    fn maybe(&mut self) {
        let every = (self.settled / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let events: datafusion::arrow::datatypes::SchemaRef = Arc::new(sluice_schema::arrow::schema());
        let alerts: datafusion::arrow::datatypes::SchemaRef = Arc::new(crate::alerts_schema());
        for ((table, schema), unchanged) in [("events", &events), ("alerts", &alerts)].into_iter().zip(self.unchanged.iter_mut()) {
            match crate::maintain::compact_with(&self.root, table, schema, self.settled, 2, unchanged) {
                Ok(c) => {
                    self.metrics.compacted_hours.fetch_add(c.hours, Ordering::Relaxed);
                    self.metrics.compacted_files.fetch_add(c.files_merged, Ordering::Relaxed);
                    if c.hours > 0 {
                        eprintln!("sluice-analyzer: compacted {table}: {}", serde_json::to_string(&c).unwrap_or_default());
                    }
                }
                Err(e) => {
                    self.metrics.compact_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("sluice-analyzer: compacting {table} failed (retried at the next pass): {e:#}");
                }
            }
        }
    }
}

struct Detector {
    root: PathBuf,
    rules: Vec<Rule>,
    lookback_hours: i64,
    sink: Option<crate::alerts::Sink>,
    metrics: Arc<Metrics>,
    rt: tokio::runtime::Handle,
    last: Instant,
    /// New events since the last run.
    fresh: u64,
}

impl Detector {
    fn maybe(&mut self, pipeline: &Mutex<Pipeline>, every: Duration) -> Result<()> {
        if self.last.elapsed() < every {
            return Ok(());
        }
        self.last = Instant::now();
        {
            let mut p = lock(pipeline);
            p.decode()?;
            self.fresh += p.take_fresh();
        }
        if self.fresh == 0 || self.rules.is_empty() {
            return Ok(());
        }
        // A failed run (a user rule's SQL, a busy alerts topic) is logged and retried on the
        // next tick with the same events; it does not stop ingestion.
        if let Err(e) = self.detect(pipeline) {
            self.metrics.detect_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("sluice-analyzer: chain detection failed (retried at the next tick): {e:#}");
        }
        Ok(())
    }

    fn detect(&mut self, pipeline: &Mutex<Pipeline>) -> Result<()> {
        let t = Instant::now();
        let (pending, newest) = {
            let p = lock(pipeline);
            (p.w.pending()?, p.newest_ts)
        };
        // Measured from the newest event, not the clock: catching up on a backlog still sees
        // whole chains.
        let since = crate::archive::Hour::of_micros(newest - self.lookback_hours * 3_600_000_000);
        let alerts = self.rt.block_on(async {
            let ctx = crate::query::context_live(&self.root, since, pending).await?;
            chains::run(&ctx, &self.rules).await
        })?;
        // Kafka first: an alert in the archive is never raised again, so it must not get there
        // before it was delivered (a failure here retries the whole run; at worst an alert is
        // delivered twice, with the same id).
        if let Some(s) = &self.sink {
            s.send(&alerts)?;
        }
        chains::archive(&self.root, &alerts)?;
        let mut out = std::io::stdout().lock();
        for a in &alerts {
            writeln!(out, "{}", serde_json::to_string(a)?)?;
        }
        out.flush()?;
        self.fresh = 0;
        self.metrics.alerts.fetch_add(alerts.len() as u64, Ordering::Relaxed);
        self.metrics.detect_runs.fetch_add(1, Ordering::Relaxed);
        self.metrics.detect_last_ms.store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(())
    }
}
