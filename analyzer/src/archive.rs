//! The Parquet archive: `ARCHIVE/<table>/date=YYYY-MM-DD/hour=HH/part-<id>.parquet`, zstd,
//! row groups of [`ROW_GROUP`] rows. A file is written under a temporary name, synced, renamed
//! into place and its directory synced: a reader (DataFusion, DuckDB, pyarrow) never sees a
//! partial file. Events are deduplicated by id against what the hour's partition already holds,
//! so a redelivered event never appears twice.

use anyhow::{Context as _, Result};
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// zstd level of the archive's pages.
pub const ZSTD_LEVEL: i32 = 1;

/// Rows per Parquet row group.
pub const ROW_GROUP: usize = 128 * 1024;

/// One hour partition of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour {
    /// Hours since the Unix epoch (UTC).
    pub n: i64,
}

impl Hour {
    pub fn of_micros(ts: i64) -> Hour {
        Hour { n: ts.div_euclid(3_600_000_000) }
    }

    pub fn dir(&self, root: &Path, table: &str) -> PathBuf {
        let (date, hour) = self.partition();
        root.join(table).join(format!("date={date}")).join(format!("hour={hour}"))
    }

    /// The values of the `date` and `hour` partition columns (`YYYY-MM-DD`, `HH`, UTC).
    pub fn partition(&self) -> (String, String) {
        let secs = self.n * 3600;
        let (y, m, d) = civil(secs.div_euclid(86_400));
        (format!("{y:04}-{m:02}-{d:02}"), format!("{:02}", secs.rem_euclid(86_400) / 3600))
    }
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// More contiguous runs than this in one batch and [`by_hour`] copies rows instead of slicing.
pub const MAX_RUNS: usize = 256;

/// Split a batch by the hour of its `ts` column. Events arrive nearly in time order, so an
/// hour's rows are a few contiguous runs: those are zero-copy slices. Only a batch whose hours
/// interleave more than [`MAX_RUNS`] times is copied, into one batch per hour.
pub fn by_hour(batch: &RecordBatch) -> Result<BTreeMap<Hour, Vec<RecordBatch>>> {
    let ts = batch.column_by_name("ts").context("no ts column")?.as_primitive::<TimestampMicrosecondType>();
    let hour = |i: usize| Hour::of_micros(if ts.is_null(i) { 0 } else { ts.value(i) });
    let mut runs: Vec<(Hour, usize, usize)> = Vec::new();
    for i in 0..ts.len() {
        let h = hour(i);
        match runs.last_mut() {
            Some(r) if r.0 == h => r.2 = i + 1,
            _ => {
                runs.push((h, i, i + 1));
                if runs.len() > MAX_RUNS {
                    break;
                }
            }
        }
    }
    let mut out: BTreeMap<Hour, Vec<RecordBatch>> = BTreeMap::new();
    if runs.len() <= MAX_RUNS {
        for (h, from, to) in runs {
            out.entry(h).or_default().push(batch.slice(from, to - from));
        }
        return Ok(out);
    }
    let mut rows: BTreeMap<Hour, Vec<u32>> = BTreeMap::new();
    for i in 0..ts.len() {
        rows.entry(hour(i)).or_default().push(i as u32);
    }
    for (h, idx) in rows {
        let idx = UInt32Array::from(idx);
        let cols = batch.columns().iter().map(|c| compute::take(c.as_ref(), &idx, None)).collect::<Result<Vec<_>, _>>()?;
        out.insert(h, vec![RecordBatch::try_new(batch.schema(), cols)?]);
    }
    Ok(out)
}

/// An event id as a dedup key: a ULID's 128 bits, or for any other id the first 128 bits of
/// its BLAKE3 hash (no allocation per event either way).
pub fn id_key(id: &str) -> u128 {
    /// Crockford base-32 digit values; 0xFF for bytes that are not digits.
    const DIGIT: [u8; 256] = {
        let mut t = [0xFF; 256];
        let alphabet = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut i = 0;
        while i < 32 {
            t[alphabet[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    let b = id.as_bytes();
    if b.len() == 26 && b[0] <= b'7' {
        let mut v: u128 = 0;
        let mut bad = 0;
        for &c in b {
            let d = DIGIT[c as usize];
            bad |= d;
            v = v << 5 | u128::from(d & 31);
        }
        if bad < 32 {
            return v;
        }
    }
    let h = blake3::hash(b);
    u128::from_le_bytes(h.as_bytes()[..16].try_into().unwrap_or([0; 16]))
}

/// Hashes [`id_key`]s, which are already uniformly spread (a ULID's random bits or a BLAKE3
/// prefix): fold the halves and mix once, instead of SipHash over 16 bytes.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let folded = (v as u64) ^ (v >> 64) as u64;
        self.0 = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(26);
    }
}

/// A set of [`id_key`]s.
pub type IdSet = HashSet<u128, std::hash::BuildHasherDefault<IdHasher>>;

/// Add the ids already in a partition directory (read from the `id` column only), as
/// [`id_key`]s, to `ids`.
pub fn ids_in(dir: &Path, ids: &mut IdSet) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let b = ParquetRecordBatchReaderBuilder::try_new(File::open(&p)?).with_context(|| format!("reading {}", p.display()))?;
        let Some(col) = b.schema().index_of("id").ok() else { continue };
        let mask = ProjectionMask::roots(b.parquet_schema(), [col]);
        for batch in b.with_projection(mask).build()? {
            let batch = batch?;
            for id in batch.column(0).as_string::<i32>().iter().flatten() {
                ids.insert(id_key(id));
            }
        }
    }
    Ok(())
}

/// Keep the rows whose `id` is not in `seen` (and not repeated within the batch); add them to `seen`.
pub fn dedup(batch: &RecordBatch, seen: &mut IdSet) -> Result<RecordBatch> {
    let ids = batch.column_by_name("id").context("no id column")?.as_string::<i32>();
    // One bit per row, written straight into the mask (no list of options, no validity).
    let keep = BooleanArray::new(BooleanBuffer::collect_bool(ids.len(), |i| ids.is_valid(i) && seen.insert(id_key(ids.value(i)))), None);
    if keep.true_count() == batch.num_rows() {
        return Ok(batch.clone());
    }
    Ok(compute::filter_record_batch(batch, &keep)?)
}

/// Top-level columns whose min/max statistics are kept: what audits and the chain rules
/// filter on, so that engines can skip row groups and pages. Statistics of the rest (JSON
/// text, nested fields, which DataFusion does not prune on) cost a compare per value for
/// nothing.
const PRUNED_ON: &[&str] = &["v", "id", "ts", "kind", "instance", "worker", "session", "route", "upstream", "direction", "method", "tool", "payload_truncated", "bytes", "latency_us", "status", "error_code"];

/// How the archive's files are written.
fn writer_properties(schema: &SchemaRef) -> Result<WriterProperties> {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
        .set_max_row_group_row_count(Some(ROW_GROUP))
        // Unique per event: a dictionary is built, overflows and is thrown away page after page.
        .set_column_dictionary_enabled(ColumnPath::from("id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_column_dictionary_enabled(ColumnPath::from("payload"), false)
        // A request's event id, shared by the few events of its call: no dictionary either
        // (2 M events: 3.57 s CPU with one, 3.50 s without, 3.42 s before the column; medians).
        .set_column_dictionary_enabled(ColumnPath::from("call"), false)
        .set_created_by(format!("sluice-analyzer {}", env!("CARGO_PKG_VERSION")));
    for col in ArrowSchemaConverter::new().convert(schema)?.columns() {
        let path = col.path();
        if !path.parts().first().is_some_and(|p| PRUNED_ON.contains(&p.as_str())) {
            b = b.set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
        }
    }
    Ok(b.build())
}

/// Write `batches` as one Parquet file in `dir`, atomically; returns its path.
/// A Parquet file being written: under a temporary name (hidden from readers) until
/// [`OpenFile::finish`] syncs it and renames it into place. Batches are encoded as they come,
/// so memory holds the current row group's compressed pages, not the file's rows. Dropped
/// unfinished (an error on the way), the temporary file is removed.
pub struct OpenFile {
    w: Option<ArrowWriter<File>>,
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    rows: u64,
}

impl OpenFile {
    pub fn create(dir: &Path, name: &str, schema: SchemaRef) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.parquet"));
        let tmp = dir.join(format!(".{name}.parquet.tmp"));
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let props = writer_properties(&schema)?;
        let mut open = OpenFile { w: None, dir: dir.to_owned(), tmp, path, rows: 0 };
        open.w = Some(ArrowWriter::try_new(f, schema, Some(props))?);
        Ok(open)
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let w = self.w.as_mut().context("the file is already finished")?;
        w.write(batch).with_context(|| format!("writing {}", self.tmp.display()))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Close, sync, rename into place, sync the directory.
    pub fn finish(mut self) -> Result<PathBuf> {
        let w = self.w.take().context("the file is already finished")?;
        let f = w.into_inner().with_context(|| format!("closing {}", self.tmp.display()))?;
        f.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if self.w.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `batches` as one file, atomically.
pub fn write_file(dir: &Path, name: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<PathBuf> {
    let mut f = OpenFile::create(dir, name, schema)?;
    for b in batches {
        f.write(b)?;
    }
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows whose id was seen before, in the set or earlier in the same batch, are dropped;
    /// the others are kept in order and added to the set.
    #[test]
    fn dedup_keeps_each_id_once() {
        use datafusion::arrow::array::{ArrayRef, StringArray};
        let batch = |ids: &[Option<&str>]| RecordBatch::try_from_iter([("id", std::sync::Arc::new(StringArray::from(ids.to_vec())) as ArrayRef)]).unwrap();
        let ids_of = |b: &RecordBatch| b.column(0).as_string::<i32>().iter().map(|v| v.map(str::to_owned)).collect::<Vec<_>>();
        let mut seen = IdSet::default();
        seen.insert(id_key("01JD0000000000000000000003"));
        let first = dedup(&batch(&[Some("01JD0000000000000000000001"), Some("01JD0000000000000000000002"), Some("01JD0000000000000000000001"), Some("01JD0000000000000000000003"), None, Some("not-a-ulid")]), &mut seen).unwrap();
        assert_eq!(ids_of(&first), [Some("01JD0000000000000000000001".into()), Some("01JD0000000000000000000002".into()), Some("not-a-ulid".into())]);
        let second = dedup(&batch(&[Some("not-a-ulid"), Some("01JD0000000000000000000004")]), &mut seen).unwrap();
        assert_eq!(ids_of(&second), [Some("01JD0000000000000000000004".into())]);
        assert_eq!(seen.len(), 5);
    }

    #[test]
    fn id_keys_follow_ulids_and_hash_anything_else() {
        let (a, b) = ("01JD0000000000000000000001", "01JD0000000000000000000002");
        assert_eq!(id_key(b) - id_key(a), 1);
        assert_ne!(id_key("not-a-ulid"), id_key("not-a-ulid2"));
        assert_eq!(id_key("not-a-ulid"), id_key("not-a-ulid"));
        // Lower case is not Crockford as the gateway writes it: hashed, not decoded.
        assert_ne!(id_key(&a.to_lowercase()), id_key(a));
    }

    /// Statistics are kept exactly for the columns audits filter on, nested leaves included
    /// in neither direction by mistake.
    #[test]
    fn statistics_are_kept_for_the_pruned_columns_only() {
        let schema: SchemaRef = std::sync::Arc::new(sluice_schema::arrow::schema());
        let props = writer_properties(&schema).unwrap();
        let descr = ArrowSchemaConverter::new().convert(&schema).unwrap();
        let mut kept: Vec<String> = Vec::new();
        for col in descr.columns() {
            if props.statistics_enabled(col.path()) != EnabledStatistics::None {
                kept.push(col.path().string());
            }
        }
        assert_eq!(kept, PRUNED_ON);
        assert_eq!(props.statistics_enabled(&ColumnPath::from(vec!["findings".to_string(), "list".into(), "item".into(), "kind".into()])), EnabledStatistics::None);
        assert!(descr.columns().len() > 40, "nested leaves are columns of their own");
    }

    fn batch_at(ts: &[i64]) -> RecordBatch {
        use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), false),
            Field::new("row", DataType::Int64, false),
        ]));
        let rows = Int64Array::from_iter_values(0..ts.len() as i64);
        RecordBatch::try_new(schema, vec![std::sync::Arc::new(TimestampMicrosecondArray::from(ts.to_vec())), std::sync::Arc::new(rows)]).unwrap()
    }

    /// The rows of each hour, in order, whichever way the batch was split.
    fn rows_by_hour(split: &BTreeMap<Hour, Vec<RecordBatch>>) -> BTreeMap<i64, Vec<i64>> {
        split
            .iter()
            .map(|(h, bs)| (h.n, bs.iter().flat_map(|b| b.column(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>().values().to_vec()).collect()))
            .collect()
    }

    /// Nearly ordered events are split into zero-copy slices (a late event makes a run of its
    /// own); heavily interleaved hours are copied into one batch per hour. Either way each
    /// hour gets exactly its rows, in order.
    #[test]
    fn batches_split_by_hour_with_slices_or_copies() {
        const H: i64 = 3_600_000_000;
        let ts: Vec<i64> = [0, 1, 2, H, H + 1, 5, 2 * H, 2 * H + 1].to_vec();
        let split = by_hour(&batch_at(&ts)).unwrap();
        assert_eq!(rows_by_hour(&split), BTreeMap::from([(0, vec![0, 1, 2, 5]), (1, vec![3, 4]), (2, vec![6, 7])]));
        assert_eq!(split[&Hour { n: 0 }].len(), 2, "two runs of hour 0, two slices");
        let interleaved: Vec<i64> = (0..2 * MAX_RUNS as i64 + 10).map(|i| (i % 2) * H + i).collect();
        let split = by_hour(&batch_at(&interleaved)).unwrap();
        assert!(split.values().all(|bs| bs.len() == 1), "copied, one batch per hour");
        let want: BTreeMap<i64, Vec<i64>> = [0, 1].into_iter().map(|h| (h, (0..interleaved.len() as i64).filter(|i| i % 2 == h).collect())).collect();
        assert_eq!(rows_by_hour(&split), want);
    }

    #[test]
    fn a_file_is_hidden_until_finished_and_removed_if_never_finished() {
        let dir = std::env::temp_dir().join(format!("sluice-openfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let visible = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        let b = batch_at(&[1, 2, 3]);
        let mut f = OpenFile::create(&dir, "part-a", b.schema()).unwrap();
        f.write(&b).unwrap();
        f.write(&b).unwrap();
        assert_eq!(visible(&dir), vec![".part-a.parquet.tmp"], "only a hidden temporary file while writing");
        assert_eq!(f.rows(), 6);
        let path = f.finish().unwrap();
        assert_eq!(visible(&dir), vec!["part-a.parquet"]);
        let rows: usize = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap().build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 6, "every batch written, in one file");

        let mut g = OpenFile::create(&dir, "part-b", b.schema()).unwrap();
        g.write(&b).unwrap();
        drop(g); // an error on the way: never finished
        assert_eq!(visible(&dir), vec!["part-a.parquet"], "the unfinished file is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hours_name_their_utc_date() {
        // 2026-11-21T23:59:59Z and the next second.
        let t = 1_795_305_599_000_000;
        let root = Path::new("/a");
        assert_eq!(Hour::of_micros(t).dir(root, "events"), Path::new("/a/events/date=2026-11-21/hour=23"));
        assert_eq!(Hour::of_micros(t + 1_000_000).dir(root, "events"), Path::new("/a/events/date=2026-11-22/hour=00"));
        assert_eq!(Hour::of_micros(0).dir(root, "events"), Path::new("/a/events/date=1970-01-01/hour=00"));
        // Leap day.
        assert_eq!(Hour::of_micros(1_709_208_000_000_000).dir(root, "e"), Path::new("/a/e/date=2024-02-29/hour=12"));
    }
}
