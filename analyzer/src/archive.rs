//! The Parquet archive: `ARCHIVE/<table>/date=YYYY-MM-DD/hour=HH/part-<id>.parquet`, zstd,
//! row groups of [`ROW_GROUP`] rows. A file is written under a temporary name, synced, renamed
//! into place and its directory synced: a reader (DataFusion, DuckDB, pyarrow) never sees a
//! partial file. Events are deduplicated by id against what the hour's partition already holds,
//! so a redelivered event never appears twice.

use anyhow::{Context as _, Result};
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

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

/// Split a batch by the hour of its `ts` column.
pub fn by_hour(batch: &RecordBatch) -> Result<BTreeMap<Hour, RecordBatch>> {
    let ts = batch.column_by_name("ts").context("no ts column")?.as_primitive::<TimestampMicrosecondType>();
    // Most batches fall within one hour: no copy then.
    let (lo, hi) = (compute::min(ts).unwrap_or(0), compute::max(ts).unwrap_or(0));
    if ts.null_count() == 0 && Hour::of_micros(lo) == Hour::of_micros(hi) {
        return Ok(BTreeMap::from([(Hour::of_micros(lo), batch.clone())]));
    }
    let mut rows: BTreeMap<Hour, Vec<u32>> = BTreeMap::new();
    for (i, t) in ts.iter().enumerate() {
        rows.entry(Hour::of_micros(t.unwrap_or(0))).or_default().push(i as u32);
    }
    let mut out = BTreeMap::new();
    for (h, idx) in rows {
        let idx = UInt32Array::from(idx);
        let cols = batch.columns().iter().map(|c| compute::take(c.as_ref(), &idx, None)).collect::<Result<Vec<_>, _>>()?;
        out.insert(h, RecordBatch::try_new(batch.schema(), cols)?);
    }
    Ok(out)
}

/// An event id as a dedup key: a ULID's 128 bits, or for any other id the first 128 bits of
/// its BLAKE3 hash (no allocation per event either way).
pub fn id_key(id: &str) -> u128 {
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let b = id.as_bytes();
    if b.len() == 26 && b[0] <= b'7' {
        let mut v: u128 = 0;
        let mut ok = true;
        for &c in b {
            match CROCKFORD.iter().position(|&x| x == c) {
                Some(d) => v = v << 5 | d as u128,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return v;
        }
    }
    let h = blake3::hash(b);
    u128::from_le_bytes(h.as_bytes()[..16].try_into().unwrap_or([0; 16]))
}

/// The ids already in a partition directory (read from the `id` column only), as [`id_key`]s.
pub fn ids_in(dir: &Path) -> Result<HashSet<u128>> {
    let mut ids = HashSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(ids) };
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
    Ok(ids)
}

/// Keep the rows whose `id` is not in `seen` (and not repeated within the batch); add them to `seen`.
pub fn dedup(batch: &RecordBatch, seen: &mut HashSet<u128>) -> Result<RecordBatch> {
    let ids = batch.column_by_name("id").context("no id column")?.as_string::<i32>();
    let keep: BooleanArray = ids.iter().map(|id| Some(id.is_some_and(|i| seen.insert(id_key(i))))).collect();
    if keep.true_count() == batch.num_rows() {
        return Ok(batch.clone());
    }
    Ok(compute::filter_record_batch(batch, &keep)?)
}

/// Write `batches` as one Parquet file in `dir`, atomically; returns its path.
pub fn write_file(dir: &Path, name: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.parquet"));
    let tmp = dir.join(format!(".{name}.parquet.tmp"));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(ROW_GROUP))
        // Unique per event: a dictionary is built, overflows and is thrown away page after page.
        .set_column_dictionary_enabled(ColumnPath::from("id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_column_dictionary_enabled(ColumnPath::from("payload"), false)
        // Min/max of JSON text prunes nothing.
        .set_column_statistics_enabled(ColumnPath::from("payload"), EnabledStatistics::None)
        .set_created_by(format!("sluice-analyzer {}", env!("CARGO_PKG_VERSION")))
        .build();
    let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = ArrowWriter::try_new(f, schema, Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    let f = w.into_inner()?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_keys_follow_ulids_and_hash_anything_else() {
        let (a, b) = ("01JD0000000000000000000001", "01JD0000000000000000000002");
        assert_eq!(id_key(b) - id_key(a), 1);
        assert_ne!(id_key("not-a-ulid"), id_key("not-a-ulid2"));
        assert_eq!(id_key("not-a-ulid"), id_key("not-a-ulid"));
        // Lower case is not Crockford as the gateway writes it: hashed, not decoded.
        assert_ne!(id_key(&a.to_lowercase()), id_key(a));
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
