//! The Kafka forwarder: reads the spool from its cursor, produces every record (idempotent
//! producer, acks=all, key = session id, so a session's events stay in order in one
//! partition), and advances the cursor over the prefix Kafka has acknowledged.
//!
//! Delivery never times out (`message.timeout.ms = 0`): while the broker is away, librdkafka
//! holds what is in flight, the forwarder stops reading, and the spool grows. A delivery that
//! fails for good (an error report) stops production; once every report is in, production
//! restarts from the cursor, so order is kept and nothing is skipped (records after the failed
//! one may go twice: at-least-once, identified by event id). The cursor is saved to
//! `cursor` in the spool directory every [`SAVE_EVERY`] and on stop.

use super::Recorder;
use crate::config::recording::KafkaCfg;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use sluice_schema::spool::{self, Item, SegmentReader};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_IN_FLIGHT: usize = 100_000;
pub const SAVE_EVERY: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the forwarder waits at the spool's tail before looking for new records (the
/// writer appends once per group commit, 10 ms by default; looking more often finds nothing).
const TAIL_WAIT: Duration = Duration::from_millis(10);

/// Delivery reports land here from librdkafka's callback (called inside `poll`, on the
/// forwarder's own thread; the mutex is never contended).
struct Ctx {
    rec: Arc<Recorder>,
    reports: Mutex<Vec<(usize, Result<(), Refusal>)>>,
}

/// A failed delivery: the error, and whether it is this record's for good (no retry can
/// deliver it: too large for the broker) rather than the connection's or the broker's.
struct Refusal {
    error: String,
    for_good: bool,
    /// What to do, when the refusal says what (a missing topic).
    hint: Option<String>,
}

/// Errors that only this record meets, on every attempt: it is passed over (left in the
/// spool, counted, logged) so that the records after it are not held back for ever.
fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize | RDKafkaErrorCode::MessageBatchTooLarge | RDKafkaErrorCode::InvalidRecord)
    )
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        let down = matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown));
        if down {
            self.rec.counters.kafka_up.store(0, Ordering::Relaxed);
            tracing::warn!(error = %error, reason, "Kafka unreachable; events wait in the spool");
        } else {
            tracing::info!(error = %error, reason, "Kafka client error (retried)");
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, n: usize) {
        let res = match r {
            Ok(_) => Ok(()),
            Err((e, m)) => {
                use rdkafka::Message as _;
                let hint = is_missing_topic(e.rdkafka_error_code()).then(|| missing_topic(m.topic()));
                Err(Refusal { error: e.to_string(), for_good: refused_for_good(e), hint })
            }
        };
        self.reports.lock().push((n, res));
    }
}

/// One record in flight: where it ends in the spool, and how many deliveries are awaited.
struct Slot {
    seq: u64,
    end: u64,
    awaiting: u8,
    failed: bool,
}

pub struct Forwarder {
    rec: Arc<Recorder>,
    producer: BaseProducer<Ctx>,
    events_topic: String,
    approvals_topic: String,
    dir: PathBuf,
}

fn cursor_path(dir: &Path) -> PathBuf {
    dir.join("cursor")
}

/// The saved cursor: (segment, offset) of the first record not known to be delivered.
pub fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(cursor_path(dir)).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn save_cursor(dir: &Path, c: (u64, u64)) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut &f, format!("{} {}\n", c.0, c.1).as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, cursor_path(dir))
}

/// The first segment at or after `seq`, if any.
fn segment_from(dir: &Path, seq: u64) -> Option<u64> {
    if dir.join(spool::segment_name(seq)).exists() {
        return Some(seq);
    }
    spool::segments(dir).ok()?.into_iter().map(|(s, _)| s).find(|s| *s >= seq)
}

/// What to do about a topic the brokers do not have (they usually do not create topics).
fn missing_topic(topic: &str) -> String {
    format!("Kafka topic {topic} does not exist on the brokers: create it (e.g. kafka-topics.sh --create --topic {topic} --partitions 12 --replication-factor 3); events wait in the spool until it exists")
}

fn is_missing_topic(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(code, Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic))
}

impl Forwarder {
    /// Say at start, with what to do, when a topic the forwarder sends to does not exist: its
    /// events would wait in the spool, and librdkafka's own refusal comes only after 30 s. (An
    /// unreachable broker is reported by the client's error callback instead.)
    fn check_topics(&self) {
        for topic in [&self.events_topic, &self.approvals_topic] {
            // Brokers that do not answer in time are not asked again here: the forwarder gets
            // on with its work (and a stop is held up by one wait at most).
            let Ok(md) = self.producer.client().fetch_metadata(Some(topic), Duration::from_secs(5)) else { return };
            if is_missing_topic(md.topics().first().and_then(|t| t.error()).map(RDKafkaErrorCode::from)) {
                tracing::error!(topic = %topic, "{}", missing_topic(topic));
            }
        }
    }

    pub fn new(rec: Arc<Recorder>, k: &KafkaCfg) -> anyhow::Result<Self> {
        let mut cc = ClientConfig::new();
        for (key, v) in &k.properties {
            cc.set(key, v);
        }
        cc.set("queue.buffering.max.messages", (2 * MAX_IN_FLIGHT).to_string());
        let ctx = Ctx { rec: rec.clone(), reports: Mutex::new(Vec::new()) };
        let producer: BaseProducer<Ctx> = cc.create_with_context(ctx)?;
        let dir = rec.cfg.spool.dir.clone();
        Ok(Forwarder { rec, producer, events_topic: k.events_topic.clone(), approvals_topic: k.approvals_topic.clone(), dir })
    }

    pub fn run(self) {
        let rec = self.rec.clone();
        let c = &rec.counters;
        let first = spool::segments(&self.dir).ok().and_then(|s| s.first().map(|(q, _)| *q)).unwrap_or(1);
        let mut cursor = read_cursor(&self.dir).unwrap_or((first, 0));
        if cursor.0 < first {
            cursor = (first, 0);
        }
        let mut saved = cursor;
        let mut last_save = Instant::now();
        let mut reader: Option<SegmentReader> = None;
        let mut rseq = cursor.0;
        let mut roff = cursor.1;
        let mut inflight: VecDeque<Slot> = VecDeque::new();
        let mut base = 0usize;
        let mut failing = false;
        let mut backoff = Duration::from_millis(200);
        let mut stop_at: Option<Instant> = None;
        tracing::info!(segment = cursor.0, offset = cursor.1, "Kafka forwarder starting from the spool cursor");
        self.check_topics();
        loop {
            if rec.stopping() && stop_at.is_none() {
                stop_at = Some(Instant::now() + Duration::from_millis(rec.stop_grace_ms.load(Ordering::Relaxed)));
            }
            // Read before the spool is read to its end below: only then does reaching the end
            // mean everything the writer will ever write was seen (read after, the writer could
            // have appended its last records in between, and they would be left behind).
            let writer_was_done = rec.writer_done();
            // Produce what the spool holds, while there is room in flight.
            let mut produced = 0usize;
            let mut at_end = false;
            while !failing && inflight.len() < MAX_IN_FLIGHT && produced < 20_000 {
                if reader.is_none() {
                    match segment_from(&self.dir, rseq) {
                        Some(s) => {
                            if s != rseq {
                                roff = 0;
                            }
                            rseq = s;
                            match SegmentReader::open(&self.dir.join(spool::segment_name(s)), roff) {
                                Ok(r) => reader = Some(r),
                                Err(e) => {
                                    tracing::error!(error = %e, "spool segment unreadable; skipped");
                                    c.corrupt.fetch_add(1, Ordering::Relaxed);
                                    rseq += 1;
                                    continue;
                                }
                            }
                        }
                        None => {
                            at_end = true;
                            break;
                        }
                    }
                }
                let Some(r) = reader.as_mut() else { break };
                let sealed = rseq < rec.active_seq.load(Ordering::SeqCst);
                match r.next() {
                    Ok(Item::Record { record, end, .. }) => {
                        let n = base + inflight.len();
                        let topics: &[&str] = if record.flags & spool::FLAG_APPROVAL != 0 { &[&self.events_topic, &self.approvals_topic] } else { &[&self.events_topic] };
                        let (mut queued, mut refused) = (0u8, false);
                        for t in topics {
                            let mut msg = BaseRecord::with_opaque_to(t, n).key(record.key).payload(record.value);
                            loop {
                                match self.producer.send(msg) {
                                    Ok(()) => {
                                        queued += 1;
                                        break;
                                    }
                                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), m)) => {
                                        msg = m;
                                        self.producer.poll(Duration::from_millis(20));
                                    }
                                    Err((e, _)) if refused_for_good(&e) => {
                                        c.unsendable.fetch_add(1, Ordering::Relaxed);
                                        tracing::error!(error = %e, topic = t, segment = rseq, offset = roff, bytes = record.value.len(), "event too large for Kafka: it stays in the spool (`sluice spool cat`) and the events after it are sent");
                                        break;
                                    }
                                    Err((e, _)) => {
                                        c.failed.fetch_add(1, Ordering::Relaxed);
                                        if is_missing_topic(e.rdkafka_error_code()) {
                                            tracing::error!(topic = t, "{}", missing_topic(t));
                                        }
                                        tracing::error!(error = %e, topic = t, "event could not be produced; it stays in the spool");
                                        failing = true;
                                        refused = true;
                                        break;
                                    }
                                }
                            }
                        }
                        inflight.push_back(Slot { seq: rseq, end, awaiting: queued, failed: refused });
                        roff = end;
                        produced += 1;
                    }
                    Ok(item @ (Item::End { .. } | Item::Torn { .. })) => {
                        // A sealed segment is finished at its end; bytes left over (a torn tail
                        // after a crash) or a corrupt record are skipped, loudly.
                        let (at, problem) = match item {
                            Item::Torn { at, reason } => (at, Some(reason)),
                            Item::End { at } => {
                                let torn = sealed && std::fs::metadata(r.path()).is_ok_and(|m| at < m.len());
                                (at, torn.then_some("torn record at the end (a crash while writing)"))
                            }
                            Item::Record { .. } => unreachable!("matched above"),
                        };
                        if let Some(reason) = problem.filter(|_| sealed) {
                            c.corrupt.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(segment = %r.path().display(), offset = at, reason, "spool segment: the rest is skipped");
                        }
                        if sealed {
                            reader = None;
                            rseq += 1;
                            roff = 0;
                            continue;
                        }
                        at_end = true;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "spool read failed; retrying");
                        reader = None;
                        at_end = true;
                        break;
                    }
                }
            }
            // Caught up with the writer: wait a little so records accumulate (and delivery
            // reports arrive) instead of spinning on the spool's tail.
            if at_end && inflight.is_empty() {
                self.producer.poll(TAIL_WAIT);
            } else {
                if at_end {
                    // poll() returns at the first delivery report; sleep so reports and
                    // records batch up.
                    std::thread::sleep(TAIL_WAIT);
                }
                self.producer.poll(Duration::ZERO);
            }
            // Delivery reports.
            let reports = std::mem::take(&mut *self.producer.context().reports.lock());
            for (n, res) in reports {
                let Some(slot) = n.checked_sub(base).and_then(|i| inflight.get_mut(i)) else { continue };
                slot.awaiting = slot.awaiting.saturating_sub(1);
                match res {
                    Ok(()) => {
                        c.sent.fetch_add(1, Ordering::Relaxed);
                        c.kafka_up.store(1, Ordering::Relaxed);
                    }
                    Err(Refusal { error, for_good: true, .. }) => {
                        // Every retry would meet the same refusal: passed over, not retried.
                        c.unsendable.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %error, segment = slot.seq, ends_at = slot.end, "event too large for Kafka: it stays in the spool (`sluice spool cat`) and the events after it are sent");
                    }
                    Err(Refusal { error, hint, .. }) => {
                        slot.failed = true;
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        if !failing {
                            if let Some(h) = hint {
                                tracing::error!("{h}");
                            }
                            tracing::error!(error = %error, "Kafka refused an event; production restarts from the spool cursor after a pause");
                        }
                        failing = true;
                    }
                }
            }
            while inflight.front().is_some_and(|s| s.awaiting == 0 && !s.failed) {
                if let Some(s) = inflight.pop_front() {
                    cursor = (s.seq, s.end);
                    base += 1;
                }
            }
            rec.delivered_below.store(cursor.0, Ordering::Relaxed);
            if failing && inflight.iter().all(|s| s.awaiting == 0) {
                // Every report is in: restart from the first undelivered record.
                base += inflight.len();
                inflight.clear();
                reader = None;
                rseq = cursor.0;
                roff = cursor.1;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                failing = false;
            } else if !failing && produced > 0 {
                backoff = Duration::from_millis(200);
            }
            if cursor != saved && (last_save.elapsed() >= SAVE_EVERY || stop_at.is_some()) {
                match save_cursor(&self.dir, cursor) {
                    Ok(()) => saved = cursor,
                    Err(e) => tracing::warn!(error = %e, "cannot save the Kafka cursor (events may be sent again after a restart)"),
                }
                last_save = Instant::now();
            }
            if let Some(t) = stop_at {
                let drained = at_end && inflight.is_empty() && writer_was_done;
                if drained || Instant::now() >= t {
                    if !inflight.is_empty() {
                        tracing::warn!(in_flight = inflight.len(), "stopping with undelivered events; they are sent from the spool on next start");
                    }
                    let _ = save_cursor(&self.dir, cursor);
                    return;
                }
            }
        }
    }
}
