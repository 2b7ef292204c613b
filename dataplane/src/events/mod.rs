//! Session recording: every event goes from the worker that saw it to the local spool and,
//! when configured, on to Kafka. The request path never waits for disk or broker.
//!
//! ```text
//!  worker 0 ─ Emitter ─▶ bounded queue ─┐                                ┌─▶ cursor file
//!  worker 1 ─ Emitter ─▶ bounded queue ─┼─▶ spool writer ─▶ segments ─▶ Kafka forwarder ─▶ Kafka
//!  process  ─ (mutex) ─▶ bounded queue ─┘   (group commit)   (CRC)      (idempotent, acks=all)
//! ```
//!
//! - [`Emitter`] (one per worker, `!Send`): serialises an event (JSON, schema in
//!   `sluice-schema`) into a framed spool record and pushes it onto the worker's own bounded
//!   queue. A full queue spills into the worker's overflow list, re-queued in order before
//!   any newer event; past `recording.overflow_mib` new requests are refused (fail closed),
//!   past twice that an event is lost with a counter and a log line (no path drops silently).
//! - [`writer`]: one thread merges the queues by emission stamp (a session's events stay in
//!   the order they happened when its requests run on different workers), appends records to
//!   the active segment, fsyncs by group commit
//!   (every `fsync_interval` or `fsync_records`), rotates by size/age and applies retention.
//!   It is the only thread that deletes segments. When the spool cannot be written (disk full)
//!   or is full of undelivered events, `recording.on_full` decides: refuse new requests, or
//!   drop the oldest segment (counted as lost).
//! - [`kafka`]: one thread reads the spool from its cursor and produces every record (key =
//!   session id), tracks delivery reports, advances the cursor over the delivered prefix and
//!   persists it. While Kafka is away the spool grows; afterwards it drains in order.
//!
//! Without `[recording.kafka]` the spool is the sink (`sluice spool cat`, the analyzer's
//! `ingest --spool`). Events in the queues when the process is killed (at most
//! `fsync_interval` worth) are the only ones a `kill -9` can lose; everything spooled is
//! delivered after a restart, at least once (duplicates share their event id).

mod emit;
pub mod record;
pub mod cli;
pub mod kafka;
pub mod writer;

pub use emit::{Emitter, ProcessEmitter};

use crate::config::recording::RecordingCfg;
use anyhow::Context as _;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counters for `/metrics` (all monotonic except the gauges noted).
#[derive(Debug, Default)]
pub struct Counters {
    pub emitted: AtomicU64,
    /// Events that found their worker's queue full and waited in its overflow list.
    pub overflowed: AtomicU64,
    pub spooled: AtomicU64,
    pub spool_write_errors: AtomicU64,
    pub fsyncs: AtomicU64,
    pub sent: AtomicU64,
    /// Delivery reports with an error (the events are produced again from the spool).
    pub failed: AtomicU64,
    /// Events Kafka refuses for good (too large for the broker): left in the spool, passed over.
    pub unsendable: AtomicU64,
    /// Events whose over-long fields were cut before they were recorded.
    pub shrunk: AtomicU64,
    /// Lost because a worker's overflow passed twice `recording.overflow_mib`.
    pub lost_overflow: AtomicU64,
    /// Lost to `on_full = "drop_oldest"`.
    pub lost_dropped: AtomicU64,
    /// Lost because the recorder had stopped (shutdown).
    pub lost_stopped: AtomicU64,
    /// Records found torn or corrupt in the spool (skipped, logged).
    pub corrupt: AtomicU64,
    /// Gauge: bytes in the spool directory.
    pub spool_bytes: AtomicU64,
    /// Gauge: segment files.
    pub segments: AtomicU64,
    /// Gauge: 1 while the Kafka forwarder has a working connection.
    pub kafka_up: AtomicU64,
}

/// A framed spool record on its way to the writer, stamped (monotonic clock) when it was
/// emitted. The writer merges the queues by this stamp, so the spool holds events in the order
/// they happened even when one session's requests run on different workers.
pub struct Queued {
    pub at: Instant,
    pub rec: Vec<u8>,
}

/// The recording pipeline shared by all workers.
pub struct Recorder {
    pub cfg: RecordingCfg,
    pub instance: Arc<str>,
    pub counters: Counters,
    /// False while the spool cannot take events: new requests are refused (fail closed).
    pub spool_ok: AtomicBool,
    senders: Mutex<Vec<Option<SyncSender<Queued>>>>,
    process: Mutex<Option<SyncSender<Queued>>>,
    writer: OnceLock<Thread>,
    writer_sleeping: AtomicBool,
    stopping: AtomicBool,
    writer_done: AtomicBool,
    /// How long the forwarder may keep delivering after a stop request.
    pub stop_grace_ms: AtomicU64,
    /// The writer's active segment (segments below it are sealed).
    pub active_seq: AtomicU64,
    /// Every segment below this is delivered to Kafka (the writer may delete them).
    pub delivered_below: AtomicU64,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    /// Per queue, the oldest record its worker holds in overflow (for the writer's merge).
    pub(super) unqueued: Arc<writer::Unqueued>,
}

impl Recorder {
    /// Open the spool (exclusive lock on its directory), start the writer and, when
    /// configured, the Kafka forwarder. Fails with a message that names the fix.
    pub fn start(cfg: RecordingCfg, instance: &str, workers: usize) -> anyhow::Result<Arc<Self>> {
        let spool = writer::SpoolWriter::open(&cfg.spool, cfg.kafka.is_some())
            .with_context(|| format!("recording.spool.dir {}: the spool cannot be opened", cfg.spool.dir.display()))?;
        let mut senders = Vec::new();
        let mut receivers: Vec<Receiver<Queued>> = Vec::new();
        for _ in 0..=workers {
            let (tx, rx) = sync_channel(cfg.queue_events);
            senders.push(Some(tx));
            receivers.push(rx);
        }
        let process = senders.pop().flatten();
        let rec = Arc::new(Recorder {
            instance: Arc::from(instance),
            counters: Counters::default(),
            spool_ok: AtomicBool::new(true),
            senders: Mutex::new(senders),
            process: Mutex::new(process),
            writer: OnceLock::new(),
            writer_sleeping: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            writer_done: AtomicBool::new(false),
            stop_grace_ms: AtomicU64::new(0),
            active_seq: AtomicU64::new(spool.active_seq()),
            delivered_below: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            unqueued: Arc::new(writer::Unqueued::new(receivers.len())),
            cfg,
        });
        spool.publish(&rec.counters);
        let r = rec.clone();
        let h = std::thread::Builder::new().name("sluice-spool".into()).spawn(move || writer::run(r, receivers, spool))?;
        let _ = rec.writer.set(h.thread().clone());
        rec.threads.lock().push(("spool writer", h));
        if let Some(k) = rec.cfg.kafka.clone() {
            let fwd = kafka::Forwarder::new(rec.clone(), &k).context("recording.kafka: the producer cannot be created")?;
            let h = std::thread::Builder::new().name("sluice-kafka".into()).spawn(move || fwd.run())?;
            rec.threads.lock().push(("kafka forwarder", h));
        }
        tracing::info!(dir = %rec.cfg.spool.dir.display(), kafka = rec.cfg.kafka.as_ref().map(|k| k.describe()), "recording started");
        Ok(rec)
    }

    /// The emitter for worker `i` (each worker takes its own once).
    pub fn emitter(self: &Arc<Self>, worker: usize) -> Option<Emitter> {
        let tx = self.senders.lock().get_mut(worker)?.take()?;
        Some(Emitter::new(self.clone(), worker, tx))
    }

    /// For events from outside the workers (lifecycle, session sweeps); takes a mutex.
    pub fn process_emitter(self: &Arc<Self>) -> ProcessEmitter<'_> {
        ProcessEmitter::new(self, &self.process)
    }

    /// Whether new requests may start (fail closed when the spool cannot take events).
    pub fn accepting(&self) -> bool {
        self.spool_ok.load(Ordering::Relaxed)
    }

    fn wake_writer(&self) {
        if self.writer_sleeping.load(Ordering::SeqCst) && self.writer_sleeping.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The writer has drained every queue and stopped.
    pub fn writer_done(&self) -> bool {
        self.writer_done.load(Ordering::SeqCst)
    }

    /// Flush and stop: the writer drains every queue and fsyncs; the forwarder gets `grace` to
    /// deliver and saves its cursor. Events still undelivered stay in the spool for next start.
    pub fn stop(&self, grace: Duration) {
        self.process.lock().take();
        self.stop_grace_ms.store(grace.as_millis() as u64, Ordering::Relaxed);
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
        let deadline = std::time::Instant::now() + grace + Duration::from_secs(5);
        for (name, h) in self.threads.lock().drain(..) {
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                // The writer only lingers while the spool cannot be written: what it still holds
                // in memory is lost with the process. The forwarder's events are in the spool.
                tracing::error!(thread = name, "recording thread did not stop in time (spool not writable?); events it still held in memory are lost, spooled ones are kept");
            }
        }
        let c = &self.counters;
        tracing::info!(
            emitted = c.emitted.load(Ordering::Relaxed),
            spooled = c.spooled.load(Ordering::Relaxed),
            sent = c.sent.load(Ordering::Relaxed),
            lost = c.lost_overflow.load(Ordering::Relaxed) + c.lost_dropped.load(Ordering::Relaxed) + c.lost_stopped.load(Ordering::Relaxed),
            "recording stopped"
        );
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    micros(SystemTime::now())
}

/// `at` in microseconds since the Unix epoch, as events carry it.
pub fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

impl Counters {
    /// Prometheus text for the recording pipeline.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, String); 14] = [
            ("sluice_events_emitted_total", "counter", "Events emitted by the gateway.", format!(" {}", l(&self.emitted))),
            ("sluice_events_overflowed_total", "counter", "Events that found their worker's queue full and waited in its overflow list (not lost).", format!(" {}", l(&self.overflowed))),
            ("sluice_events_spooled_total", "counter", "Events written to the spool.", format!(" {}", l(&self.spooled))),
            ("sluice_events_sent_total", "counter", "Events acknowledged by Kafka (per topic delivery).", format!(" {}", l(&self.sent))),
            ("sluice_events_failed_total", "counter", "Kafka deliveries that failed (produced again from the spool).", format!(" {}", l(&self.failed))),
            ("sluice_events_unsendable_total", "counter", "Events Kafka refused for good (too large for the broker's message.max.bytes): kept in the spool, not sent; the ones after them are.", format!(" {}", l(&self.unsendable))),
            ("sluice_events_shrunk_total", "counter", "Events recorded with over-long fields cut (each field the cut names its size).", format!(" {}", l(&self.shrunk))),
            (
                "sluice_events_lost_total",
                "counter",
                "Events lost, by reason (there should be none).",
                format!(
                    "{{reason=\"overflow\"}} {}\nsluice_events_lost_total{{reason=\"dropped_oldest\"}} {}\nsluice_events_lost_total{{reason=\"stopped\"}} {}",
                    l(&self.lost_overflow),
                    l(&self.lost_dropped),
                    l(&self.lost_stopped)
                ),
            ),
            ("sluice_spool_corrupt_records_total", "counter", "Torn or corrupt spool records skipped.", format!(" {}", l(&self.corrupt))),
            ("sluice_spool_write_errors_total", "counter", "Failed spool writes or fsyncs.", format!(" {}", l(&self.spool_write_errors))),
            ("sluice_spool_fsyncs_total", "counter", "Group commits.", format!(" {}", l(&self.fsyncs))),
            ("sluice_spool_bytes", "gauge", "Bytes in the spool directory.", format!(" {}", l(&self.spool_bytes))),
            ("sluice_spool_segments", "gauge", "Segment files in the spool.", format!(" {}", l(&self.segments))),
            ("sluice_kafka_up", "gauge", "1 while Kafka acknowledges events.", format!(" {}", l(&self.kafka_up))),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{value}");
        }
    }
}

#[cfg(test)]
mod tests;
