//! The spool writer: one thread that drains every worker's queue into the active segment,
//! with group commit, rotation, retention and the `on_full` policy.

use super::{Counters, Queued, Recorder};
use crate::config::recording::{OnFull, SpoolCfg};
use sluice_schema::spool::{self, SegmentReader, Item};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A batch is written once it holds this much (or the queues are empty).
const BATCH_BYTES: usize = 1 << 20;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_millis(500);
/// While events flow the writer polls the queues once per group commit (no wake-up per
/// event, one write and one fsync per wake-up), but at least this often...
const BUSY_POLL_MAX: Duration = Duration::from_millis(10);
/// ...and at most this often: a sub-millisecond `fsync_interval` syncs every millisecond
/// while events flow (or sooner by `fsync_records`; a burst is written without sleeping).
const BUSY_POLL_MIN: Duration = Duration::from_millis(1);
/// ...and after this long without events it sleeps until woken.
const QUIET_AFTER: Duration = Duration::from_millis(50);
/// While the spool cannot be written, retry this often.
const RETRY_EVERY: Duration = Duration::from_millis(200);

struct Segment {
    seq: u64,
    bytes: u64,
    created: SystemTime,
}

pub struct SpoolWriter {
    cfg: SpoolCfg,
    kafka: bool,
    _lock: File,
    file: File,
    seq: u64,
    len: u64,
    opened: Instant,
    unsynced: usize,
    last_sync: Instant,
    /// Every segment on disk, oldest first; the last is the active one.
    segments: VecDeque<Segment>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(spool::segment_name(seq))
}

impl SpoolWriter {
    /// Create the directory, take its lock, and start a new segment after the existing ones
    /// (never append to a segment a previous process wrote: its tail may be torn).
    pub fn open(cfg: &SpoolCfg, kafka: bool) -> io::Result<Self> {
        let hint = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what}: {e}; create it with write access for the sluice user, or set recording.spool.dir"));
        std::fs::create_dir_all(&cfg.dir).map_err(|e| hint(e, "cannot create the directory"))?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(cfg.dir.join("lock")).map_err(|e| hint(e, "cannot open the lock file"))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "another sluice process uses this spool directory; give each gateway its own recording.spool.dir"));
        }
        let mut segments = VecDeque::new();
        let listed = spool::segments(&cfg.dir).map_err(|e| io::Error::other(e.to_string()))?;
        for (seq, path) in &listed {
            let meta = std::fs::metadata(path)?;
            segments.push_back(Segment { seq: *seq, bytes: meta.len(), created: meta.modified().unwrap_or_else(|_| SystemTime::now()) });
        }
        let seq = listed.last().map_or(1, |(s, _)| s + 1);
        let (file, len) = create_segment(&cfg.dir, seq)?;
        segments.push_back(Segment { seq, bytes: len, created: SystemTime::now() });
        Ok(SpoolWriter { cfg: cfg.clone(), kafka, _lock: lock, file, seq, len, opened: Instant::now(), unsynced: 0, last_sync: Instant::now(), segments })
    }

    pub fn active_seq(&self) -> u64 {
        self.seq
    }

    /// Publish the size gauges.
    pub fn publish(&self, c: &Counters) {
        c.spool_bytes.store(self.segments.iter().map(|s| s.bytes).sum(), Ordering::Relaxed);
        c.segments.store(self.segments.len() as u64, Ordering::Relaxed);
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Append a batch of whole records. On error the segment is cut back to its last whole
    /// record, so a retry never follows a partial one.
    fn append(&mut self, batch: &[u8]) -> io::Result<()> {
        if self.len > spool::HEADER_LEN && (self.len + batch.len() as u64 > self.cfg.segment_bytes || self.opened.elapsed() >= self.cfg.segment_age) {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(batch) {
            let _ = self.file.set_len(self.len);
            let _ = std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.len));
            return Err(e);
        }
        self.len += batch.len() as u64;
        if let Some(s) = self.segments.back_mut() {
            s.bytes = self.len;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let seq = self.seq + 1;
        let (file, len) = create_segment(&self.cfg.dir, seq)?;
        self.file = file;
        self.seq = seq;
        self.len = len;
        self.opened = Instant::now();
        self.segments.push_back(Segment { seq, bytes: len, created: SystemTime::now() });
        // The new name must be durable before anything is acknowledged from it.
        if let Ok(d) = File::open(&self.cfg.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn sync_due(&self) -> bool {
        self.unsynced > 0 && (self.unsynced >= self.cfg.fsync_records || self.last_sync.elapsed() >= self.cfg.fsync_interval)
    }

    /// Delete what may go: delivered segments (with Kafka), segments past `max_age` (sealed and
    /// delivered, or any sealed one without Kafka). Returns whether the spool is over `max_bytes`
    /// with nothing more it may delete.
    /// `budget` is the most bytes the spool may hold (normally `max_bytes`).
    fn retention(&mut self, rec: &Recorder, budget: u64) -> bool {
        let delivered_below = rec.delivered_below.load(Ordering::Relaxed);
        let now = SystemTime::now();
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            let over = self.total_bytes() > budget;
            let drop_oldest = over && rec.cfg.on_full == OnFull::DropOldest;
            // Why the oldest sealed segment may go, if at all; `lose` when its events go unread.
            let (go, lose) = if self.kafka {
                let delivered = s.seq < delivered_below;
                (delivered || drop_oldest, !delivered)
            } else {
                let old = now.duration_since(s.created).unwrap_or_default() > self.cfg.max_age;
                (old || drop_oldest, !old)
            };
            if !go {
                break;
            }
            let seq = s.seq;
            let path = segment_path(&self.cfg.dir, seq);
            if lose {
                let n = count_records(&path);
                rec.counters.lost_dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(segment = %path.display(), events = n, "spool full: oldest undelivered segment dropped (recording.on_full = \"drop_oldest\")");
            }
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot delete a spool segment");
                    break;
                }
            }
            self.segments.pop_front();
        }
        self.publish(&rec.counters);
        self.total_bytes() > budget
    }
}

fn create_segment(dir: &Path, seq: u64) -> io::Result<(File, u64)> {
    let mut f = OpenOptions::new().create_new(true).append(true).open(segment_path(dir, seq))?;
    f.write_all(&spool::header())?;
    Ok((f, spool::HEADER_LEN))
}

/// Records in a segment (for loss accounting when one is dropped).
pub fn count_records(path: &Path) -> u64 {
    let Ok(mut r) = SegmentReader::open(path, 0) else { return 0 };
    let mut n = 0;
    while let Ok(Item::Record { .. }) = r.next() {
        n += 1;
    }
    n
}

/// Per queue, the stamp of the oldest record its emitter still holds outside the queue (in its
/// overflow list), or none. One atomic per worker, written only by that worker and only while it
/// overflows; the [`Merger`] writes nothing stamped at or after it.
pub struct Unqueued {
    epoch: Instant,
    oldest: Box<[AtomicU64]>,
}

impl Unqueued {
    pub fn new(queues: usize) -> Self {
        Unqueued { epoch: Instant::now(), oldest: (0..queues).map(|_| AtomicU64::new(u64::MAX)).collect() }
    }

    /// Queue `q`'s emitter now holds records from `at` on outside the queue (`None`: nothing).
    /// Called after records moved into the queue, so the merger never sees the stamp cleared
    /// before it can see the records.
    pub fn set(&self, q: usize, at: Option<Instant>) {
        let v = at.map_or(u64::MAX, |t| u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1));
        self.oldest[q].store(v, Ordering::SeqCst);
    }

    fn oldest(&self, q: usize) -> Option<Instant> {
        match self.oldest.get(q)?.load(Ordering::SeqCst) {
            u64::MAX => None,
            n => Some(self.epoch + Duration::from_nanos(n)),
        }
    }
}

/// Records taken from the worker queues, put back into the order they were emitted.
///
/// Each queue is in order on its own, but two workers' events interleave: a response recorded
/// on worker 0 and the `DELETE` that ends its session on worker 1 a moment later sit in
/// different queues. Every pass reads the clock first (the cutoff) and takes from each queue
/// only records stamped before it, then sorts what it took by stamp. An event that happened
/// before a taken one was pushed before that one was stamped, so it is in its queue already and
/// taken in the same pass; a record stamped after the cutoff waits for the next pass. An event
/// that went to its worker's overflow list instead (queue full) is not in a queue yet: its stamp
/// in [`Unqueued`] (read after the cutoff, before the queue is drained) holds back everything
/// stamped after it until it has been taken.
pub(super) struct Merger {
    /// Per queue: the first record stamped after the last cutoff.
    held: Vec<Option<Queued>>,
    /// Taken and sorted, not yet in a batch (a pass may take more than one batch holds, and
    /// records stamped at or after `limit` wait for an overflowed one).
    taken: Vec<Queued>,
    /// The oldest overflowed stamp seen by the last pass.
    limit: Option<Instant>,
    unqueued: Arc<Unqueued>,
}

/// What one [`Merger::fill`] did.
pub(super) struct Filled {
    /// Records moved into the batch.
    pub records: usize,
    /// Records are waiting (held past the cutoff, or taken beyond the batch's size): fill again
    /// without sleeping.
    pub pending: bool,
    /// Every queue is disconnected and nothing is left.
    pub closed: bool,
}

impl Merger {
    pub(super) fn new(unqueued: Arc<Unqueued>) -> Self {
        Merger { held: (0..unqueued.oldest.len()).map(|_| None).collect(), taken: Vec::new(), limit: None, unqueued }
    }

    fn writable(&self, q: &Queued) -> bool {
        self.limit.is_none_or(|l| q.at < l)
    }

    /// Move records into `batch`, oldest first, until it holds [`BATCH_BYTES`] or nothing
    /// stamped before this pass's cutoff (and before any overflowed record) is left.
    pub(super) fn fill(&mut self, rxs: &[Receiver<Queued>], batch: &mut Vec<u8>) -> Filled {
        let mut closed = 0;
        if self.taken.first().is_none_or(|q| !self.writable(q)) {
            let cutoff = Instant::now();
            self.limit = None;
            for (i, (rx, held)) in rxs.iter().zip(&mut self.held).enumerate() {
                if let Some(o) = self.unqueued.oldest(i) {
                    self.limit = Some(self.limit.map_or(o, |l| l.min(o)));
                }
                match held.take() {
                    Some(q) if q.at > cutoff => {
                        *held = Some(q);
                        continue;
                    }
                    Some(q) => self.taken.push(q),
                    None => {}
                }
                loop {
                    match rx.try_recv() {
                        Ok(q) if q.at > cutoff => {
                            *held = Some(q);
                            break;
                        }
                        Ok(q) => self.taken.push(q),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed += 1;
                            break;
                        }
                    }
                }
            }
            // Stable: ties keep queue order. Each queue's run is sorted already, which the sort
            // finds and merges.
            self.taken.sort_by_key(|q| q.at);
        }
        let mut take = 0;
        for q in &self.taken {
            if batch.len() >= BATCH_BYTES || !self.writable(q) {
                break;
            }
            batch.extend_from_slice(&q.rec);
            take += 1;
        }
        self.taken.drain(..take);
        // Records waiting for an overflowed one are not pending: its worker wakes the writer
        // when it moves them into the queue.
        let pending = self.taken.first().is_some_and(|q| self.writable(q)) || self.held.iter().any(Option::is_some);
        Filled { records: take, pending, closed: closed == rxs.len() && !pending && self.taken.is_empty() }
    }
}

/// The writer thread.
pub fn run(rec: Arc<Recorder>, rxs: Vec<Receiver<Queued>>, mut w: SpoolWriter) {
    let c = &rec.counters;
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
    let mut batch_records = 0usize;
    let mut failing_since: Option<Instant> = None;
    let mut last_retention = Instant::now();
    let mut full = false;
    let mut last_event = Instant::now();
    let mut merger = Merger::new(rec.unqueued.clone());
    loop {
        let f = if batch.is_empty() { merger.fill(&rxs, &mut batch) } else { Filled { records: 0, pending: false, closed: false } };
        let (n, all_closed) = (f.records, f.closed);
        batch_records += n;
        // `full` only refuses new calls: what was already emitted is still written (max_bytes is
        // exceeded by at most the calls in flight), never held in memory where a stop loses it.
        if !batch.is_empty() {
            match w.append(&batch) {
                Ok(()) => {
                    c.spooled.fetch_add(batch_records as u64, Ordering::Relaxed);
                    w.unsynced += batch_records;
                    rec.active_seq.store(w.seq, Ordering::SeqCst);
                    batch.clear();
                    batch_records = 0;
                    if failing_since.take().is_some() {
                        tracing::info!("spool writable again; requests are accepted");
                        rec.spool_ok.store(true, Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    c.spool_write_errors.fetch_add(1, Ordering::Relaxed);
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::error!(dir = %w.cfg.dir.display(), error = %e, "spool write failed; new requests are refused until it succeeds (events are kept in memory meanwhile)");
                        rec.spool_ok.store(false, Ordering::SeqCst);
                    }
                    if rec.cfg.on_full == OnFull::DropOldest && e.raw_os_error() == Some(libc::ENOSPC) {
                        // Make room: a budget just under the current size drops the oldest segment.
                        let budget = w.total_bytes().saturating_sub(1);
                        w.retention(&rec, budget);
                    }
                    std::thread::sleep(RETRY_EVERY);
                    continue;
                }
            }
        }
        if w.sync_due() {
            match w.sync() {
                Ok(()) => {
                    c.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    c.spool_write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "spool fsync failed");
                }
            }
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            let budget = w.cfg.max_bytes;
            let over = w.retention(&rec, budget);
            let now_full = over && rec.cfg.on_full == OnFull::Refuse;
            if now_full != full {
                full = now_full;
                rec.spool_ok.store(!full && failing_since.is_none(), Ordering::SeqCst);
                if full {
                    tracing::error!(dir = %w.cfg.dir.display(), bytes = w.total_bytes(), max_mib = w.cfg.max_bytes >> 20, "spool full of undelivered events; new requests are refused until Kafka takes them (recording.on_full = \"refuse\")");
                } else {
                    tracing::info!("spool has room again; requests are accepted");
                }
            }
        }
        if n > 0 || f.pending || !batch.is_empty() {
            last_event = Instant::now();
            continue;
        }
        // Stop once every producer is gone, or nothing came for a while after the stop request.
        if rec.stopping() && (all_closed || last_event.elapsed() > Duration::from_millis(500)) {
            let _ = w.sync();
            w.publish(c);
            rec.writer_done.store(true, Ordering::SeqCst);
            return;
        }
        // While events flow, poll once per group commit: emitters never pay for a wake-up, and
        // each wake-up is one write and one fsync. After a quiet spell, sleep until an emitter
        // wakes us, a sync falls due, or a retention pass.
        if last_event.elapsed() < QUIET_AFTER {
            std::thread::park_timeout(w.cfg.fsync_interval.clamp(BUSY_POLL_MIN, BUSY_POLL_MAX));
            continue;
        }
        rec.writer_sleeping.store(true, Ordering::SeqCst);
        let f = merger.fill(&rxs, &mut batch);
        if f.records > 0 || f.pending {
            rec.writer_sleeping.store(false, Ordering::SeqCst);
            batch_records += f.records;
            continue;
        }
        let wait = if w.unsynced > 0 { w.cfg.fsync_interval.saturating_sub(w.last_sync.elapsed()) } else { RETENTION_EVERY };
        let wait = if rec.stopping() { wait.min(Duration::from_millis(5)) } else { wait };
        std::thread::park_timeout(wait.max(Duration::from_micros(200)));
        rec.writer_sleeping.store(false, Ordering::SeqCst);
    }
}
