//! `ingest --spool DIR`: session events from a gateway's spool into the archive.
//!
//! Records are read in spool order from the last saved cursor, decoded to Arrow in chunks
//! ([`crate::decode`]: one pass of the event reader in [`crate::json`]; the `payload` JSON kept
//! as its text), split by hour (zero-copy slices), deduplicated by id and written as one file
//! per hour partition when a chunk of files is due. The cursor is saved only after the files holding everything before it are durable,
//! so a crash re-reads at most what was not archived — and dedup drops what was.

use crate::archive::{self, Hour};
use crate::decode::NotAnEvent;
use anyhow::{bail, Context as _, Result};
use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use sluice_schema::spool::{self, Item, SegmentReader};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records decoded per Arrow batch. Each batch is encoded into Parquet right after it is
/// decoded, so a small one is still in cache: 8 Ki records measured 2–3 % less CPU per event
/// than 64 Ki (2 M events, three runs each).
pub const CHUNK: usize = 8 * 1024;

/// Event documents → Arrow batches of the archive schema ([`crate::decode`]).
pub struct Codec {
    pub schema: SchemaRef,
}

impl Default for Codec {
    fn default() -> Self {
        Codec { schema: Arc::new(sluice_schema::arrow::schema()) }
    }
}

impl Codec {
    /// Decode event JSON documents into one batch of the archive schema.
    pub fn decode<D: AsRef<[u8]>>(&self, docs: &[D]) -> Result<RecordBatch> {
        crate::decode::decode(&self.schema, docs)
    }
}

/// Raw event documents waiting to be decoded, in one buffer.
#[derive(Default)]
pub struct Chunk {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Chunk {
    pub fn push(&mut self, doc: &[u8]) {
        self.buf.extend_from_slice(doc);
        self.ends.push(self.buf.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn docs(&self) -> Vec<&[u8]> {
        let mut at = 0;
        self.ends
            .iter()
            .map(|&e| {
                let d = &self.buf[at..e];
                at = e;
                d
            })
            .collect()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }
}

/// What ingestion did (one run, or so far in continuous mode).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub read: u64,
    pub written: u64,
    pub duplicates: u64,
    pub files: u64,
    pub skipped_torn: u64,
    /// Documents that are not session events (another producer's message on the topic, a
    /// damaged one): set aside whole in `ARCHIVE/_rejected/`, not archived.
    pub rejected: u64,
}

/// Writes decoded events into one open file per hour partition as they come (memory holds
/// each file's current row group, encoded), and closes the files on [`Writer::flush`].
pub struct Writer {
    pub root: PathBuf,
    pub table: &'static str,
    pub codec: Codec,
    pub rows_per_file: usize,
    /// Keep the events of the open files in memory too, for [`Writer::pending`] (continuous
    /// mode detects over events before they are in files).
    pub keep_unwritten: bool,
    open: BTreeMap<Hour, archive::OpenFile>,
    unwritten: BTreeMap<Hour, Vec<RecordBatch>>,
    pending_rows: usize,
    /// The ids each recent hour holds, for dedup, with the flush generation that last used
    /// it. An hour unused for a whole flush interval is forgotten at the next flush (its
    /// files are then all finished, so a late event for it reloads the ids from them) and its
    /// set, cleared, serves the next new hour at its grown capacity: memory stays bounded in
    /// continuous mode, and a new hour's set neither grows by rehashing nor faults fresh
    /// pages in.
    seen: HashMap<Hour, (archive::IdSet, u64)>,
    spare_sets: Vec<archive::IdSet>,
    generation: u64,
    seq: u64,
}

/// How many cleared id sets are kept for new hours.
const SPARE_SETS: usize = 2;

impl Writer {
    pub fn new(root: &Path, table: &'static str, rows_per_file: usize) -> Self {
        Writer {
            root: root.to_owned(),
            table,
            codec: Codec::default(),
            rows_per_file,
            keep_unwritten: false,
            open: BTreeMap::new(),
            unwritten: BTreeMap::new(),
            pending_rows: 0,
            seen: HashMap::new(),
            spare_sets: Vec::new(),
            generation: 0,
            seq: 0,
        }
    }

    /// Add decoded events; returns how many were duplicates.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<u64> {
        let mut dups = 0;
        for (h, slices) in archive::by_hour(batch)? {
            let (seen, used) = match self.seen.entry(h) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let mut ids = self.spare_sets.pop().unwrap_or_default();
                    archive::ids_in(&h.dir(&self.root, self.table), &mut ids)?;
                    v.insert((ids, self.generation))
                }
            };
            *used = self.generation;
            for b in slices {
                let kept = archive::dedup(&b, seen)?;
                dups += (b.num_rows() - kept.num_rows()) as u64;
                if kept.num_rows() == 0 {
                    continue;
                }
                let file = match self.open.entry(h) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        self.seq += 1;
                        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
                        let name = format!("part-{stamp}-{}-{}", std::process::id(), self.seq);
                        v.insert(archive::OpenFile::create(&h.dir(&self.root, self.table), &name, self.codec.schema.clone())?)
                    }
                };
                file.write(&kept)?;
                self.pending_rows += kept.num_rows();
                if self.keep_unwritten {
                    self.unwritten.entry(h).or_default().push(kept);
                }
            }
        }
        Ok(dups)
    }

    pub fn due(&self) -> bool {
        self.pending_rows >= self.rows_per_file
    }

    pub fn pending_rows(&self) -> usize {
        self.pending_rows
    }

    /// The decoded events not yet in finished files, with their `date` and `hour` partition
    /// columns (for detection before they are in files; needs `keep_unwritten`).
    pub fn pending(&self) -> Result<Vec<RecordBatch>> {
        let schema = crate::query::partitioned_schema();
        let mut out = Vec::new();
        for (h, batches) in &self.unwritten {
            let (date, hour) = h.partition();
            for b in batches {
                let mut cols = b.columns().to_vec();
                cols.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(date.as_str(), b.num_rows()))));
                cols.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(hour.as_str(), b.num_rows()))));
                out.push(RecordBatch::try_new(schema.clone(), cols)?);
            }
        }
        Ok(out)
    }

    /// Forget which ids the partitions hold: another instance of the consumer group may have
    /// written to them since (called when partitions move between instances).
    pub fn forget_seen(&mut self) {
        self.seen.clear();
    }

    /// The hours whose ids are held for dedup (for tests).
    #[cfg(test)]
    fn held_hours(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.seen.keys().map(|h| h.n).collect();
        v.sort_unstable();
        v
    }

    /// Finish every open file (synced, renamed into place); returns (rows, files). After an
    /// error here or in [`Writer::add`] the caller stops without saving its source position:
    /// files not finished are removed, and a restart reads their events again.
    pub fn flush(&mut self) -> Result<(u64, u64)> {
        let (mut rows, mut files) = (0, 0);
        self.unwritten.clear();
        self.pending_rows = 0;
        for (_, f) in std::mem::take(&mut self.open) {
            rows += f.rows();
            f.finish()?;
            files += 1;
        }
        // Every file is finished: an hour's ids can be reloaded from them if it is needed again.
        let keep_from = self.generation;
        let stale: Vec<Hour> = self.seen.iter().filter(|(_, (_, used))| *used < keep_from).map(|(h, _)| *h).collect();
        for h in stale {
            if let Some((mut ids, _)) = self.seen.remove(&h) {
                if self.spare_sets.len() < SPARE_SETS {
                    ids.clear();
                    self.spare_sets.push(ids);
                }
            }
        }
        self.generation += 1;
        Ok((rows, files))
    }
}

/// Events on their way into the archive: raw documents → decoded, deduplicated batches per
/// hour → files. Whoever feeds it saves its source position only after [`Pipeline::flush`].
pub struct Pipeline {
    pub w: Writer,
    chunk: Chunk,
    pub st: Stats,
    /// When the oldest event not yet in a file was read.
    oldest: Option<Instant>,
    /// Events decoded since the last [`Pipeline::take_fresh`].
    fresh: u64,
    /// The newest event time seen (µs), where detection's look-back is measured from.
    pub newest_ts: i64,
}

impl Pipeline {
    pub fn new(root: &Path, rows_per_file: usize) -> Self {
        Pipeline { w: Writer::new(root, "events", rows_per_file), chunk: Chunk::default(), st: Stats::default(), oldest: None, fresh: 0, newest_ts: 0 }
    }

    pub fn push(&mut self, doc: &[u8]) -> Result<()> {
        self.chunk.push(doc);
        self.oldest.get_or_insert_with(Instant::now);
        if self.chunk.len() >= CHUNK {
            self.decode()?;
        }
        Ok(())
    }

    /// Decode what is buffered into the writer.
    pub fn decode(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let docs = self.chunk.docs();
        let batch = match self.w.codec.decode(&docs) {
            Ok(b) => b,
            // One document that is not a session event must not stop the archive (nor, in
            // continuous mode, every restart at the same offset): the others are archived, it
            // is set aside whole, counted and logged. Any other error is the decoder's own and
            // would set good events aside: it stops the ingest with nothing set aside and the
            // source position unsaved.
            Err(e) if e.downcast_ref::<NotAnEvent>().is_some() => {
                let mut good = Vec::with_capacity(docs.len());
                for d in docs {
                    match self.w.codec.decode(&[d]) {
                        Ok(_) => good.push(d),
                        Err(e) if e.downcast_ref::<NotAnEvent>().is_some() => {
                            reject(&self.w.root, d, &format!("{e:#}"))?;
                            self.st.rejected += 1;
                        }
                        Err(e) => return Err(internal(e)),
                    }
                }
                self.w.codec.decode(&good).map_err(internal)?
            }
            Err(e) => return Err(internal(e)),
        };
        if let Some(ts) = batch.column_by_name("ts").and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>()).and_then(datafusion::arrow::compute::max) {
            self.newest_ts = self.newest_ts.max(ts);
        }
        self.st.read += self.chunk.len() as u64;
        let dups = self.w.add(&batch)?;
        self.st.duplicates += dups;
        self.fresh += batch.num_rows() as u64 - dups;
        self.chunk.clear();
        Ok(())
    }

    /// Are files due: enough rows, or the oldest unwritten event waited `max_age`?
    pub fn due(&self, max_age: Duration) -> bool {
        self.w.due() || self.oldest.is_some_and(|t| t.elapsed() >= max_age)
    }

    /// How long the oldest event not yet in a file has waited.
    pub fn oldest_age(&self) -> Duration {
        self.oldest.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Decode and write everything; afterwards the source position may be saved.
    pub fn flush(&mut self) -> Result<()> {
        self.decode()?;
        let (rows, files) = self.w.flush()?;
        self.st.written += rows;
        self.st.files += files;
        self.oldest = None;
        Ok(())
    }

    /// How many new events were decoded since the last call.
    pub fn take_fresh(&mut self) -> u64 {
        std::mem::take(&mut self.fresh)
    }
}

/// A decoding error that is not a document's fault (a build whose Arrow schema and decoder
/// disagree, say): nothing is set aside, nothing archived from the chunk.
fn internal(e: anyhow::Error) -> anyhow::Error {
    e.context("decoding events failed in the analyzer itself, not because of a document: none of these events was archived or set aside and the source position stays before them; fix the cause (likely a mixed or partly rebuilt installation) and run again")
}

/// Set a document that is not a session event aside in `ROOT/_rejected/rejected.jsonl` (one
/// JSON line each: when, why, the document as text), synced before the source position that
/// passes it can be saved.
fn reject(root: &Path, doc: &[u8], reason: &str) -> Result<()> {
    use std::io::Write as _;
    let dir = root.join("_rejected");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("rejected.jsonl");
    let line = serde_json::json!({
        "at_us": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64),
        "reason": reason,
        "doc": String::from_utf8_lossy(doc),
    });
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").and_then(|_| f.sync_data()).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("sluice-analyzer: a document that is not a session event was set aside in {} ({reason})", path.display());
    Ok(())
}

/// A spool directory read from a saved cursor (`ARCHIVE/_state/spool-<hash>.cursor`), as it
/// grows: sealed segments are read to their end; the active one up to its last whole record.
pub struct SpoolTail {
    dir: PathBuf,
    cursor_file: PathBuf,
    /// (segment, offset) of the next record to read.
    pos: (u64, u64),
    skipped_torn: u64,
}

impl SpoolTail {
    pub fn open(dir: &Path, root: &Path) -> Result<Self> {
        let abs = std::fs::canonicalize(dir).with_context(|| format!("spool directory {}", dir.display()))?;
        let h = blake3::hash(abs.to_string_lossy().as_bytes()).to_hex();
        let cursor_file = root.join("_state").join(format!("spool-{}.cursor", &h[..16]));
        let pos = match std::fs::read_to_string(&cursor_file) {
            Ok(t) => {
                let mut it = t.split_whitespace().map(str::parse::<u64>);
                match (it.next(), it.next()) {
                    (Some(Ok(s)), Some(Ok(o))) => (s, o),
                    _ => bail!("{}: not a spool cursor (want `SEGMENT OFFSET`); delete it to start from the oldest segment", cursor_file.display()),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", cursor_file.display())),
        };
        Ok(SpoolTail { dir: dir.to_owned(), cursor_file, pos, skipped_torn: 0 })
    }

    /// Read up to `max` records from the position on; returns how many were read.
    pub fn read(&mut self, max: usize, each: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<usize> {
        let segs = spool::segments(&self.dir).with_context(|| format!("reading spool {}", self.dir.display()))?;
        let last = segs.last().map(|s| s.0);
        if let Some(first) = segs.first() {
            if self.pos.0 != 0 && first.0 > self.pos.0 {
                eprintln!(
                    "sluice-analyzer: spool {}: segments {}..{} were removed before they were archived (the gateway's spool retention is shorter than the analyzer's delay)",
                    self.dir.display(),
                    self.pos.0,
                    first.0 - 1
                );
                self.pos = (first.0, 0);
            }
        }
        let mut n = 0;
        let from = self.pos.0;
        for (seq, path) in segs.iter().filter(|(s, _)| *s >= from) {
            if *seq > self.pos.0 {
                self.pos = (*seq, 0);
            }
            let mut r = SegmentReader::open(path, self.pos.1)?;
            loop {
                if n == max {
                    return Ok(n);
                }
                match r.next()? {
                    Item::Record { record, end, .. } => {
                        each(record.value)?;
                        self.pos.1 = end;
                        n += 1;
                    }
                    Item::End { .. } => break,
                    Item::Torn { at, reason } => {
                        if Some(*seq) == last {
                            // The active segment's tail is still being written: later.
                            return Ok(n);
                        }
                        eprintln!("sluice-analyzer: {}: torn or corrupt at byte {at} ({reason}); the rest of this segment is skipped", path.display());
                        self.skipped_torn += 1;
                        break;
                    }
                }
            }
            if Some(*seq) != last {
                // A sealed segment is done: the next starts at its beginning.
                self.pos = (seq + 1, 0);
            }
        }
        Ok(n)
    }

    /// Save the position (only once everything before it is in durable files).
    pub fn save(&self) -> Result<()> {
        let p = &self.cursor_file;
        std::fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))?;
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {}\n", self.pos.0, self.pos.1))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, p)?;
        Ok(())
    }

    /// Spool bytes past the position (not yet read).
    pub fn behind(&self) -> Result<u64> {
        let mut n = 0;
        for (seq, path) in spool::segments(&self.dir)? {
            if seq >= self.pos.0 {
                let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                n += if seq == self.pos.0 { len.saturating_sub(self.pos.1.max(spool::HEADER_LEN)) } else { len.saturating_sub(spool::HEADER_LEN) };
            }
        }
        Ok(n)
    }

    pub fn skipped_torn(&self) -> u64 {
        self.skipped_torn
    }
}

/// Ingest everything the spool holds past the saved cursor.
pub fn from_spool(spool_dir: &Path, root: &Path, rows_per_file: usize) -> Result<Stats> {
    let mut tail = SpoolTail::open(spool_dir, root)?;
    let mut p = Pipeline::new(root, rows_per_file);
    loop {
        let n = tail.read(CHUNK, &mut |doc| p.push(doc))?;
        if p.w.due() {
            p.flush()?;
            tail.save()?;
        }
        if n < CHUNK {
            break;
        }
    }
    p.flush()?;
    tail.save()?;
    p.st.skipped_torn = tail.skipped_torn();
    Ok(p.st)
}

/// A Kafka consumer in a group whose pipeline is flushed and whose offsets are committed
/// before partitions are taken away (so the next owner starts exactly after what this one
/// archived), and whose dedup memory is dropped when partitions move.
pub struct GroupCtx {
    pub pipeline: Arc<Mutex<Pipeline>>,
    /// Next offset to commit per partition (what the pipeline holds ends there).
    pub next: Arc<Mutex<BTreeMap<i32, i64>>>,
    pub topic: String,
}

impl ClientContext for GroupCtx {}

impl ConsumerContext for GroupCtx {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            if let Err(e) = flush_and_commit(c, &self.pipeline, &self.next, &self.topic) {
                eprintln!("sluice-analyzer: before giving up partitions: {e:#} (the next owner re-reads from the last commit; dedup drops what was archived)");
            }
            let mut next = lock(&self.next);
            for e in tpl.elements() {
                next.remove(&e.partition());
            }
            lock(&self.pipeline).w.forget_seen();
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            eprintln!("sluice-analyzer: assigned partitions {parts:?} of {}", self.topic);
            lock(&self.pipeline).w.forget_seen();
        }
    }
}

/// A poisoned lock means a panic elsewhere already ended the run; keep the data.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn consumer(brokers: &str, topic: &str, group: &str, pipeline: Arc<Mutex<Pipeline>>) -> Result<BaseConsumer<GroupCtx>> {
    let ctx = GroupCtx { pipeline, next: Arc::default(), topic: topic.to_owned() };
    let c: BaseConsumer<GroupCtx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create_with_context(ctx)
        .context("creating the Kafka consumer")?;
    c.subscribe(&[topic]).with_context(|| format!("subscribing to {topic}"))?;
    Ok(c)
}

/// Write what the pipeline holds, then commit the offsets just past it.
pub fn flush_and_commit(c: &BaseConsumer<GroupCtx>, pipeline: &Mutex<Pipeline>, next: &Mutex<BTreeMap<i32, i64>>, topic: &str) -> Result<()> {
    lock(pipeline).flush()?;
    let next = lock(next).clone();
    if next.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &next {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    c.commit(&tpl, CommitMode::Sync).context("committing consumer offsets")
}

/// One poll: a message goes into the pipeline (and its offset into `next`); returns what
/// happened, for the caller's bookkeeping.
pub enum Polled {
    Message,
    Eof(i32),
    Nothing,
}

pub fn poll(c: &BaseConsumer<GroupCtx>, timeout: Duration) -> Result<Polled> {
    let ctx = c.context();
    match c.poll(timeout) {
        Some(Ok(m)) => {
            if let Some(v) = m.payload() {
                lock(&ctx.pipeline).push(v)?;
            }
            lock(&ctx.next).insert(m.partition(), m.offset() + 1);
            Ok(Polled::Message)
        }
        Some(Err(KafkaError::PartitionEOF(p))) => Ok(Polled::Eof(p)),
        Some(Err(e)) => Err(anyhow::anyhow!(e)).with_context(|| format!("consuming {}", ctx.topic)),
        None => Ok(Polled::Nothing),
    }
}

/// Ingest from a Kafka topic with a consumer group until every assigned partition is caught
/// up (or nothing arrived for `idle`). Offsets are committed only after the Parquet files that
/// hold the events before them are durable; a crash re-reads from the last commit and dedup
/// drops what was archived already.
pub fn from_kafka(brokers: &str, topic: &str, group: &str, root: &Path, rows_per_file: usize, idle: Duration) -> Result<Stats> {
    let pipeline = Arc::new(Mutex::new(Pipeline::new(root, rows_per_file)));
    let c = consumer(brokers, topic, group, pipeline.clone())?;
    let next = c.context().next.clone();
    let mut eof: HashSet<i32> = HashSet::new();
    let mut quiet = Instant::now();
    loop {
        match poll(&c, Duration::from_millis(200)).with_context(|| format!("from {brokers}"))? {
            Polled::Message => {
                quiet = Instant::now();
                eof.clear();
                if lock(&pipeline).w.due() {
                    flush_and_commit(&c, &pipeline, &next, topic)?;
                }
            }
            Polled::Eof(p) => {
                eof.insert(p);
            }
            Polled::Nothing => {}
        }
        let assigned: Vec<i32> = c.assignment().map(|a| a.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default();
        let caught_up = !assigned.is_empty() && assigned.iter().all(|p| eof.contains(p));
        if caught_up || quiet.elapsed() >= idle {
            break;
        }
    }
    flush_and_commit(&c, &pipeline, &next, topic)?;
    let st = lock(&pipeline).st.clone();
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    const H: i64 = 3_600_000_000;

    /// Records come out once each and in order however the reads are cut, while the active
    /// segment grows (a record half written at one read is whole at the next) and is then
    /// sealed by a newer one.
    #[test]
    fn a_growing_spool_is_read_once_in_order_across_reads() {
        use std::io::Write;
        let tmp = std::env::temp_dir().join(format!("sluice-ingest-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let (dir, root) = (tmp.join("spool"), tmp.join("archive"));
        std::fs::create_dir_all(&dir).unwrap();
        let records = |from: usize, to: usize| {
            let mut b = Vec::new();
            for i in from..to {
                spool::encode(&mut b, 0, b"s", format!("{{\"n\":{i}}}").as_bytes());
            }
            b
        };
        let segment = |seq: u64, body: &[u8]| {
            let mut b = spool::header().to_vec();
            b.extend_from_slice(body);
            std::fs::write(dir.join(spool::segment_name(seq)), b).unwrap();
        };
        let append = |seq: u64, body: &[u8]| std::fs::OpenOptions::new().append(true).open(dir.join(spool::segment_name(seq))).unwrap().write_all(body).unwrap();
        let mut tail = SpoolTail::open(&dir, &root).unwrap();
        let mut got: Vec<String> = Vec::new();
        // Read in reads of `max` until one comes back short (a bounded number of them: a
        // cursor that never moves must fail, not hang).
        let mut drain = |tail: &mut SpoolTail, max: usize| {
            for _ in 0..64 {
                let mut v = Vec::new();
                let n = tail
                    .read(max, &mut |d| {
                        v.push(String::from_utf8(d.to_vec()).unwrap());
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(n, v.len());
                got.extend(v);
                if n < max {
                    return;
                }
            }
            panic!("the reads never reached the end of the spool");
        };
        segment(1, &records(0, 5));
        segment(2, &records(5, 8));
        drain(&mut tail, 2);
        let next = records(8, 12);
        let cut = next.len() - 5;
        append(2, &next[..cut]);
        drain(&mut tail, 3);
        append(2, &next[cut..]);
        segment(3, &records(12, 15));
        drain(&mut tail, 4);
        drain(&mut tail, 1);
        let want: Vec<String> = (0..15).map(|i| format!("{{\"n\":{i}}}")).collect();
        assert_eq!(got, want);
        assert_eq!(tail.pos.0, 3);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    fn events(w: &Writer, evs: &[(&str, i64)]) -> RecordBatch {
        let docs: Vec<String> = evs.iter().map(|(id, ts)| format!(r#"{{"v":1,"id":"{id}","ts":{ts},"kind":"request","instance":"g"}}"#)).collect();
        w.codec.decode(&docs).unwrap()
    }

    /// The ids the archive holds for one hour, one entry per row.
    fn archived(root: &Path, hour: i64) -> Vec<String> {
        let dir = Hour { n: hour }.dir(root, "events");
        let mut ids = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "parquet") {
                for b in ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap()).unwrap().build().unwrap() {
                    let b = b.unwrap();
                    ids.extend(b.column_by_name("id").unwrap().as_string::<i32>().iter().map(|s| s.unwrap().to_string()));
                }
            }
        }
        ids.sort();
        ids
    }

    /// Hours in time order, one flush each: only the hours used since the last flush keep their
    /// ids in memory; a late duplicate for a forgotten hour is still dropped (its ids come back
    /// from its files), and a late new event there is kept.
    #[test]
    fn dedup_forgets_idle_hours_and_reloads_them_from_the_archive() {
        let root = std::env::temp_dir().join(format!("sluice-ingest-seen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut w = Writer::new(&root, "events", 1_000);
        for h in 0..6 {
            let evs: Vec<(String, i64)> = (0..3).map(|i| (format!("e-{h}-{i}"), h * H + i)).collect();
            let evs: Vec<(&str, i64)> = evs.iter().map(|(id, ts)| (id.as_str(), *ts)).collect();
            let b = events(&w, &evs);
            assert_eq!(w.add(&b).unwrap(), 0);
            // A duplicate within the hour, before its file is finished.
            assert_eq!(w.add(&events(&w, &evs[..1])).unwrap(), 1);
            w.flush().unwrap();
            assert!(w.held_hours().len() <= 2, "hours held after hour {h}: {:?}", w.held_hours());
        }
        assert_eq!(w.held_hours(), vec![5]);
        assert!(!w.spare_sets.is_empty(), "a forgotten hour's set is kept for reuse");
        let late = events(&w, &[("e-0-1", 1), ("e-0-late", 7), ("e-5-2", 5 * H + 2)]);
        assert_eq!(w.add(&late).unwrap(), 2, "the late duplicates of hours 0 and 5");
        w.flush().unwrap();
        assert_eq!(archived(&root, 0), vec!["e-0-0", "e-0-1", "e-0-2", "e-0-late"]);
        assert_eq!(archived(&root, 5), vec!["e-5-0", "e-5-1", "e-5-2"]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Another producer's message on the events topic, or a damaged document, among good
    /// events: the good ones are archived, the others set aside whole with the reason — a
    /// restart at the same position must not fail on them again.
    #[test]
    fn documents_that_are_not_events_are_set_aside_not_fatal() {
        let root = std::env::temp_dir().join(format!("sluice-ingest-rejected-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut p = Pipeline::new(&root, 1_000);
        let good = |id: &str| format!(r#"{{"v":1,"id":"{id}","ts":5,"kind":"request","instance":"g"}}"#);
        for doc in [good("a"), "not json at all".to_owned(), r#"{"hello":"world"}"#.to_owned(), good("b")] {
            p.push(doc.as_bytes()).unwrap();
        }
        p.flush().unwrap();
        assert_eq!((p.st.read, p.st.written, p.st.rejected), (4, 2, 2));
        assert_eq!(archived(&root, 0), vec!["a", "b"]);
        let set_aside: Vec<serde_json::Value> = std::fs::read_to_string(root.join("_rejected/rejected.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(set_aside.iter().map(|r| r["doc"].as_str().unwrap()).collect::<Vec<_>>(), ["not json at all", r#"{"hello":"world"}"#]);
        assert!(set_aside.iter().all(|r| r["reason"].as_str().is_some_and(|x| x.contains("not a session event"))), "{set_aside:?}");
        // Nothing but rejects in a chunk: still not fatal.
        p.push(b"[]").unwrap();
        p.flush().unwrap();
        assert_eq!(p.st.rejected, 3);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// An error of the decoder itself (here: a build whose archive schema has one column fewer
    /// than the decoder makes) is not the documents' fault: the ingest fails, saying so, and no
    /// good event is set aside as if it were bad.
    #[test]
    fn a_decoder_error_fails_the_ingest_and_sets_nothing_aside() {
        let root = std::env::temp_dir().join(format!("sluice-ingest-internal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut p = Pipeline::new(&root, 1_000);
        let full = p.w.codec.schema.clone();
        let fewer: Vec<_> = full.fields().iter().take(full.fields().len() - 1).cloned().collect();
        p.w.codec.schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fewer));
        for doc in [r#"{"v":1,"id":"a","ts":5,"kind":"request","instance":"g"}"#, "not json at all"] {
            p.push(doc.as_bytes()).unwrap();
        }
        let err = format!("{:#}", p.flush().unwrap_err());
        assert!(err.contains("in the analyzer itself"), "{err}");
        assert!(!root.join("_rejected").exists(), "nothing set aside");
        assert_eq!((p.st.rejected, p.st.written), (0, 0));
        std::fs::remove_dir_all(&root).ok();
    }
}
