//! `ingest --spool DIR`: session events from a gateway's spool into the archive.
//!
//! Records are read in spool order from the last saved cursor, decoded to Arrow in chunks
//! (arrow-json for the typed columns; the `payload` JSON kept as its text), split by hour,
//! deduplicated by id and written as one file per hour partition when a chunk of files is
//! due. The cursor is saved only after the files holding everything before it are durable,
//! so a crash re-reads at most what was not archived — and dedup drops what was.

use crate::archive::{self, Hour};
use anyhow::{Context as _, Result};
use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_schema::spool::{self, Item, SegmentReader};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Records decoded per Arrow batch.
const CHUNK: usize = 64 * 1024;

/// The event schema, and where `payload` sits in it.
pub struct Codec {
    pub schema: SchemaRef,
    without_payload: SchemaRef,
    payload_at: usize,
}

#[derive(Deserialize)]
struct PayloadOnly<'a> {
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

impl Default for Codec {
    fn default() -> Self {
        let schema = Arc::new(sluice_schema::arrow::schema());
        let payload_at = schema.index_of("payload").unwrap_or(schema.fields().len());
        // Fields the event leaves out when they hold their default (`payload_truncated` when
        // false) are read as nullable and filled in.
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != "payload")
            .map(|f| if f.name() == "payload_truncated" { Arc::new(f.as_ref().clone().with_nullable(true)) } else { f.clone() })
            .collect();
        Codec { without_payload: Arc::new(Schema::new(fields)), schema, payload_at }
    }
}

impl Codec {
    /// Decode event JSON documents into one batch of the archive schema.
    pub fn decode(&self, values: &[Vec<u8>]) -> Result<RecordBatch> {
        let mut d = arrow_json::ReaderBuilder::new(self.without_payload.clone()).with_batch_size(values.len().max(1)).build_decoder()?;
        let mut payloads: Vec<Option<&str>> = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let p: PayloadOnly<'_> = serde_json::from_slice(v).with_context(|| format!("event {i} of the chunk is not JSON"))?;
            payloads.push(p.payload.map(RawValue::get));
            let mut at = 0;
            while at < v.len() {
                let n = d.decode(&v[at..])?;
                if n == 0 {
                    break;
                }
                at += n;
            }
            d.decode(b"\n")?;
        }
        let batch = d.flush()?.unwrap_or_else(|| RecordBatch::new_empty(self.without_payload.clone()));
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        if let Ok(i) = self.without_payload.index_of("payload_truncated") {
            let filled: BooleanArray = cols[i].as_boolean().iter().map(|b| Some(b.unwrap_or(false))).collect();
            cols[i] = Arc::new(filled);
        }
        cols.insert(self.payload_at, Arc::new(StringArray::from(payloads)));
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

/// Where ingestion of one spool stands.
fn cursor_path(archive: &Path, spool: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(spool).unwrap_or_else(|_| spool.to_owned());
    let h = blake3::hash(abs.to_string_lossy().as_bytes()).to_hex();
    archive.join("_state").join(format!("spool-{}.cursor", &h[..16]))
}

fn read_cursor(p: &Path) -> Option<(u64, u64)> {
    let t = std::fs::read_to_string(p).ok()?;
    let mut it = t.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn save_cursor(p: &Path, c: (u64, u64)) -> Result<()> {
    std::fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))?;
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {}\n", c.0, c.1))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, p)?;
    Ok(())
}

/// What one ingestion run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    pub read: u64,
    pub written: u64,
    pub duplicates: u64,
    pub files: u64,
    pub skipped_torn: u64,
}

/// Buffers decoded events per hour and writes them out.
pub struct Writer {
    pub root: PathBuf,
    pub table: &'static str,
    pub codec: Codec,
    pub rows_per_file: usize,
    pending: BTreeMap<Hour, Vec<RecordBatch>>,
    pending_rows: usize,
    seen: HashMap<Hour, HashSet<String>>,
    seq: u64,
}

impl Writer {
    pub fn new(root: &Path, table: &'static str, rows_per_file: usize) -> Self {
        Writer { root: root.to_owned(), table, codec: Codec::default(), rows_per_file, pending: BTreeMap::new(), pending_rows: 0, seen: HashMap::new(), seq: 0 }
    }

    /// Add decoded events; returns how many were duplicates.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<u64> {
        let mut dups = 0;
        for (h, b) in archive::by_hour(batch)? {
            let seen = match self.seen.entry(h) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(archive::ids_in(&h.dir(&self.root, self.table))?),
            };
            let kept = archive::dedup(&b, seen)?;
            dups += (b.num_rows() - kept.num_rows()) as u64;
            if kept.num_rows() > 0 {
                self.pending_rows += kept.num_rows();
                self.pending.entry(h).or_default().push(kept);
            }
        }
        Ok(dups)
    }

    pub fn due(&self) -> bool {
        self.pending_rows >= self.rows_per_file
    }

    /// Write every pending partition; returns (rows, files).
    pub fn flush(&mut self) -> Result<(u64, u64)> {
        let (mut rows, mut files) = (0, 0);
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        for (h, batches) in std::mem::take(&mut self.pending) {
            self.seq += 1;
            let name = format!("part-{stamp}-{}-{}", std::process::id(), self.seq);
            archive::write_file(&h.dir(&self.root, self.table), &name, self.codec.schema.clone(), &batches)?;
            rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            files += 1;
        }
        self.pending_rows = 0;
        Ok((rows, files))
    }
}

/// Ingest everything the spool holds past the saved cursor.
pub fn from_spool(spool_dir: &Path, root: &Path, rows_per_file: usize) -> Result<Stats> {
    let cpath = cursor_path(root, spool_dir);
    let segs = spool::segments(spool_dir).with_context(|| format!("reading spool {}", spool_dir.display()))?;
    let cursor = read_cursor(&cpath).unwrap_or((segs.first().map_or(1, |s| s.0), 0));
    let mut w = Writer::new(root, "events", rows_per_file);
    let mut st = Stats::default();
    let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(CHUNK);
    let mut chunk_end = cursor;
    let last = segs.last().map(|s| s.0);
    for (seq, path) in segs.iter().filter(|(s, _)| *s >= cursor.0) {
        let start = if *seq == cursor.0 { cursor.1 } else { 0 };
        let mut r = SegmentReader::open(path, start)?;
        loop {
            match r.next()? {
                Item::Record { record, end, .. } => {
                    chunk.push(record.value.to_vec());
                    chunk_end = (*seq, end);
                    if chunk.len() == CHUNK {
                        ingest_chunk(&mut w, &mut chunk, &mut st)?;
                        if w.due() {
                            commit(&mut w, &mut st, &cpath, chunk_end)?;
                        }
                    }
                }
                Item::End { .. } => break,
                Item::Torn { at, reason } => {
                    if Some(*seq) == last {
                        // The active segment's tail is still being written: stop here.
                        break;
                    }
                    eprintln!("sluice-analyzer: {}: torn or corrupt at byte {at} ({reason}); the rest of this segment is skipped", path.display());
                    st.skipped_torn += 1;
                    break;
                }
            }
        }
        if Some(*seq) != last {
            // A sealed segment is done: the next starts at its beginning.
            chunk_end = (seq + 1, 0);
        }
    }
    ingest_chunk(&mut w, &mut chunk, &mut st)?;
    commit(&mut w, &mut st, &cpath, chunk_end)?;
    Ok(st)
}

fn ingest_chunk(w: &mut Writer, chunk: &mut Vec<Vec<u8>>, st: &mut Stats) -> Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let batch = w.codec.decode(chunk)?;
    st.read += chunk.len() as u64;
    st.duplicates += w.add(&batch)?;
    chunk.clear();
    Ok(())
}

fn commit(w: &mut Writer, st: &mut Stats, cpath: &Path, at: (u64, u64)) -> Result<()> {
    let (rows, files) = w.flush()?;
    st.written += rows;
    st.files += files;
    save_cursor(cpath, at)
}

/// Ingest from a Kafka topic with a consumer group until every assigned partition is caught
/// up (or nothing arrived for `idle`). Offsets are committed only after the Parquet files that
/// hold the events before them are durable; a crash re-reads from the last commit and dedup
/// drops what was archived already.
pub fn from_kafka(brokers: &str, topic: &str, group: &str, root: &Path, rows_per_file: usize, idle: std::time::Duration) -> Result<Stats> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating the Kafka consumer")?;
    c.subscribe(&[topic]).with_context(|| format!("subscribing to {topic}"))?;
    let mut w = Writer::new(root, "events", rows_per_file);
    let mut st = Stats::default();
    let mut chunk: Vec<Vec<u8>> = Vec::with_capacity(CHUNK);
    // Next offset to commit per partition (what the pending files hold ends there).
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut eof: HashSet<i32> = HashSet::new();
    let mut quiet = std::time::Instant::now();
    let commit_offsets = |c: &BaseConsumer, next: &BTreeMap<i32, i64>| -> Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
        }
        c.commit(&tpl, CommitMode::Sync).context("committing consumer offsets")
    };
    loop {
        match c.poll(std::time::Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet = std::time::Instant::now();
                eof.remove(&m.partition());
                if let Some(v) = m.payload() {
                    chunk.push(v.to_vec());
                }
                next.insert(m.partition(), m.offset() + 1);
                if chunk.len() == CHUNK {
                    ingest_chunk(&mut w, &mut chunk, &mut st)?;
                    if w.due() {
                        let (rows, files) = w.flush()?;
                        st.written += rows;
                        st.files += files;
                        commit_offsets(&c, &next)?;
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(anyhow::anyhow!(e)).with_context(|| format!("consuming {topic} from {brokers}")),
            None => {}
        }
        let assigned: Vec<i32> = c.assignment().map(|a| a.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default();
        let caught_up = !assigned.is_empty() && assigned.iter().all(|p| eof.contains(p));
        if caught_up || quiet.elapsed() >= idle {
            break;
        }
    }
    ingest_chunk(&mut w, &mut chunk, &mut st)?;
    let (rows, files) = w.flush()?;
    st.written += rows;
    st.files += files;
    commit_offsets(&c, &next)?;
    Ok(st)
}
