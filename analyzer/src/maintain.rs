//! Keeping the archive fit to query: compaction and retention.
//!
//! **Compaction.** Continuous mode writes a file per hour partition at every flush (each
//! `--flush-secs`), and every chain run that raises alerts writes one more: a year of that is
//! hundreds of thousands of small files, and every query lists and opens them. An hour
//! partition whose files have all been left alone for a while ("settled") is merged into one
//! file: the sources are read in name order (the order they were written), deduplicated by
//! event id, written under a temporary name, synced and renamed into place; then the sources
//! are removed. Only the files read are removed, so a writer adding a file to the hour
//! meanwhile (a late event, another instance of the consumer group) loses nothing. Files
//! written by another version (another schema) are left as they are.
//!
//! Between the merged file's rename and the last source's removal the hour's rows are there
//! twice (a few unlinks); a crash there would leave them so. The lease file
//! (`.compacting`, created exclusively, so one compactor per hour across processes) therefore
//! names the merged file and its sources before the merge starts: whoever finds a lease older
//! than [`STALE`] finishes it — the sources go if the merged file was renamed into place, the
//! lease goes either way.
//!
//! **Retention.** `prune` removes whole date partitions before a cutoff.

use crate::archive::{self, IdSet, OpenFile};
use anyhow::{Context as _, Result};
use datafusion::arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The lease an hour's compactor holds.
const LEASE: &str = ".compacting";
/// A lease this old belongs to a compactor that died: merging one hour takes seconds.
pub const STALE: Duration = Duration::from_secs(600);

/// What a compaction pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Compacted {
    /// Hour partitions merged.
    pub hours: u64,
    /// Files merged (removed), and rows written into the merged files.
    pub files_merged: u64,
    pub rows: u64,
    /// Rows dropped because another file of the hour held the same event id.
    pub duplicates: u64,
    /// Files left as they are because another version wrote them (another schema).
    pub files_other_schema: u64,
    /// Hours skipped because another compactor holds them, or a file was written too recently.
    pub hours_busy: u64,
    /// Interrupted compactions finished (their sources removed).
    pub recovered: u64,
}

/// The `*.parquet` files of a partition directory, in name order (hidden ones excluded).
fn parts(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    v.sort();
    Ok(v)
}

/// The hour partition directories of a table (`TABLE/date=…/hour=…`), in order.
fn hour_dirs(root: &Path, table: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(dates) = std::fs::read_dir(root.join(table)) else { return Ok(out) };
    for d in dates.flatten().filter(|d| d.file_name().to_string_lossy().starts_with("date=")) {
        for h in std::fs::read_dir(d.path())?.flatten().filter(|h| h.file_name().to_string_lossy().starts_with("hour=")) {
            out.push(h.path());
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all().with_context(|| format!("syncing {}", dir.display()))
}

/// The lease of one hour: written (merged file, then sources, one name a line) before the
/// merge, removed when dropped.
struct Lease(PathBuf);

impl Lease {
    /// Take the hour's lease, or `None` when another compactor holds it. A stale lease is
    /// finished first (see the module's note); `recovered` counts those.
    fn take(dir: &Path, recovered: &mut u64) -> Result<Option<Lease>> {
        let path = dir.join(LEASE);
        if let Ok(meta) = std::fs::metadata(&path) {
            let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
            if age < STALE {
                return Ok(None);
            }
            finish_interrupted(dir, &path)?;
            *recovered += 1;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => Ok(Some(Lease(path))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }

    /// Name the merged file and its sources, durably, before anything is renamed.
    fn record(&self, merged: &str, sources: &[PathBuf]) -> Result<()> {
        let mut text = format!("{merged}\n");
        for s in sources {
            text.push_str(&s.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            text.push('\n');
        }
        std::fs::write(&self.0, text)?;
        File::open(&self.0)?.sync_all()?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A compactor died holding `lease`: if its merged file is in place, remove the sources it
/// names (their rows are in it); otherwise nothing was renamed and the sources stand.
fn finish_interrupted(dir: &Path, lease: &Path) -> Result<()> {
    let text = std::fs::read_to_string(lease).unwrap_or_default();
    let mut names = text.lines().filter(|l| !l.is_empty() && !l.contains('/') && !l.starts_with('.'));
    if let Some(merged) = names.next() {
        if dir.join(merged).exists() {
            for s in names.filter(|s| *s != merged) {
                match std::fs::remove_file(dir.join(s)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {}", dir.join(s).display())),
                }
            }
            sync_dir(dir)?;
        }
    }
    eprintln!("sluice-analyzer: finished a compaction of {} interrupted earlier", dir.display());
    std::fs::remove_file(lease).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
    Ok(())
}

/// Merge every settled hour partition of `table` (files of the current `schema` only) that
/// holds at least `min_files` of them into one file. Settled: no file of the hour was
/// modified within `settled`.
pub fn compact(root: &Path, table: &str, schema: &SchemaRef, settled: Duration, min_files: usize) -> Result<Compacted> {
    compact_with(root, table, schema, settled, min_files, &mut Unchanged::default())
}

/// Hours found with nothing to merge (files of another schema), by how many files they held
/// then: passed over until that changes, so that a long-running `run` does not read their
/// footers again at every pass.
pub type Unchanged = std::collections::HashMap<PathBuf, usize>;

/// [`compact`], remembering across passes the hours that had nothing to merge.
pub fn compact_with(root: &Path, table: &str, schema: &SchemaRef, settled: Duration, min_files: usize, unchanged: &mut Unchanged) -> Result<Compacted> {
    let mut done = Compacted::default();
    let now = SystemTime::now();
    for dir in hour_dirs(root, table)? {
        let files = parts(&dir)?;
        if unchanged.get(&dir) == Some(&files.len()) {
            continue;
        }
        let stale_lease = std::fs::metadata(dir.join(LEASE)).ok().and_then(|m| m.modified().ok()).is_some_and(|m| now.duration_since(m).unwrap_or_default() >= STALE);
        if files.len() < min_files.max(2) && !stale_lease {
            continue;
        }
        let recent = files.iter().any(|f| std::fs::metadata(f).and_then(|m| m.modified()).is_ok_and(|m| now.duration_since(m).unwrap_or_default() < settled));
        if recent {
            done.hours_busy += 1;
            continue;
        }
        let Some(lease) = Lease::take(&dir, &mut done.recovered)? else {
            done.hours_busy += 1;
            continue;
        };
        // Listed again under the lease: an interrupted compaction may just have removed some.
        let mut ours = Vec::new();
        for f in parts(&dir)? {
            let b = ParquetRecordBatchReaderBuilder::try_new(File::open(&f)?).with_context(|| format!("reading {}", f.display()))?;
            if b.schema().fields() == schema.fields() {
                ours.push(f);
            } else {
                done.files_other_schema += 1;
            }
        }
        if ours.len() < min_files.max(2) {
            unchanged.insert(dir.clone(), files.len());
            continue;
        }
        let stamp = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let name = format!("part-{stamp}-{}-compacted", std::process::id());
        lease.record(&format!("{name}.parquet"), &ours)?;
        let mut out = OpenFile::create(&dir, &name, schema.clone())?;
        let mut seen = IdSet::default();
        for f in &ours {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f)?)?.with_batch_size(8 * 1024).build()?;
            for batch in reader {
                let batch = batch.with_context(|| format!("reading {}", f.display()))?;
                // Same fields, and the writer's own schema object (metadata aside).
                let batch = datafusion::arrow::array::RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
                let kept = if batch.schema().column_with_name("id").is_some() { archive::dedup(&batch, &mut seen)? } else { batch.clone() };
                done.duplicates += (batch.num_rows() - kept.num_rows()) as u64;
                if kept.num_rows() > 0 {
                    out.write(&kept)?;
                }
            }
        }
        done.rows += out.rows();
        out.finish()?;
        for f in &ours {
            std::fs::remove_file(f).with_context(|| format!("removing {}", f.display()))?;
        }
        sync_dir(&dir)?;
        done.hours += 1;
        done.files_merged += ours.len() as u64;
        drop(lease);
    }
    Ok(done)
}

/// What retention removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pruned {
    pub table: String,
    pub date: String,
    pub files: u64,
    pub bytes: u64,
}

/// Remove the date partitions of `tables` before `before` (`YYYY-MM-DD`, UTC).
pub fn prune(root: &Path, tables: &[&str], before: &str, dry_run: bool) -> Result<Vec<Pruned>> {
    anyhow::ensure!(is_date(before), "\"{before}\" is not a date: write YYYY-MM-DD");
    let mut out = Vec::new();
    for table in tables {
        let Ok(dates) = std::fs::read_dir(root.join(table)) else { continue };
        let mut old: Vec<(String, PathBuf)> = dates
            .flatten()
            .filter_map(|d| {
                let name = d.file_name().to_string_lossy().into_owned();
                let date = name.strip_prefix("date=")?.to_owned();
                (is_date(&date) && date.as_str() < before).then(|| (date, d.path()))
            })
            .collect();
        old.sort();
        for (date, dir) in old {
            let (mut files, mut bytes) = (0, 0);
            for h in std::fs::read_dir(&dir)?.flatten() {
                for f in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
                    if f.path().extension().is_some_and(|x| x == "parquet") {
                        files += 1;
                        bytes += f.metadata().map_or(0, |m| m.len());
                    }
                }
            }
            if !dry_run {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            out.push(Pruned { table: (*table).to_owned(), date, files, bytes });
        }
        if !dry_run {
            sync_dir(&root.join(table))?;
        }
    }
    Ok(out)
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10 && b[4] == b'-' && b[7] == b'-' && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// The date `days` before now (UTC), `YYYY-MM-DD`.
pub fn days_ago(days: u64) -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let hours = (now - days as i64 * 86_400).div_euclid(3600);
    archive::Hour { n: hours }.partition().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Hour;
    use crate::ingest::Writer;
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use std::sync::Arc;

    const H: i64 = 3_600_000_000;

    fn root(name: &str) -> PathBuf {
        let r = std::env::temp_dir().join(format!("sluice-maintain-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        r
    }

    fn events(w: &Writer, ids: &[&str], ts: i64) -> RecordBatch {
        let docs: Vec<String> = ids.iter().map(|id| format!(r#"{{"v":1,"id":"{id}","ts":{ts},"kind":"request","instance":"g"}}"#)).collect();
        w.codec.decode(&docs).unwrap()
    }

    /// One flush per call: a file of its own in the hour of `ts`.
    fn flushed(w: &mut Writer, ids: &[&str], ts: i64) {
        let b = events(w, ids, ts);
        w.add(&b).unwrap();
        w.flush().unwrap();
    }

    /// Every file of the hour written two hours ago.
    fn age(dir: &Path) {
        for f in std::fs::read_dir(dir).unwrap().flatten() {
            let file = File::options().append(true).open(f.path()).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(7200)).unwrap();
        }
    }

    /// The ids the hour's files hold, one entry per row, and how many files hold them.
    fn held(dir: &Path) -> (Vec<String>, usize) {
        let files = parts(dir).unwrap();
        let mut ids = Vec::new();
        for f in &files {
            for b in ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap()).unwrap().build().unwrap() {
                let b = b.unwrap();
                ids.extend(b.column_by_name("id").unwrap().as_string::<i32>().iter().map(|s| s.unwrap().to_owned()));
            }
        }
        ids.sort();
        (ids, files.len())
    }

    fn schema() -> SchemaRef {
        Arc::new(sluice_schema::arrow::schema())
    }

    #[test]
    fn settled_hours_become_one_file_holding_every_event_once() {
        let root = root("merge");
        let mut w = Writer::new(&root, "events", 1_000);
        for i in 0..3 {
            let ids: Vec<String> = (0..3).map(|j| format!("e-{i}-{j}")).collect();
            flushed(&mut w, &ids.iter().map(String::as_str).collect::<Vec<_>>(), 10 + i);
        }
        flushed(&mut w, &["late-hour-1"], H + 5);
        let (h0, h1) = (Hour { n: 0 }.dir(&root, "events"), Hour { n: 1 }.dir(&root, "events"));
        // A file left by a crash between a merge and its cleanup: an event twice.
        archive::write_file(&h0, "part-9-leftover", schema(), &[events(&w, &["e-0-0"], 10)]).unwrap();
        let before = held(&h0);
        assert_eq!((before.0.len(), before.1), (10, 4));

        // Just written: not settled, nothing merged.
        let c = compact(&root, "events", &schema(), Duration::from_secs(3600), 2).unwrap();
        assert_eq!((c.hours, c.hours_busy), (0, 1), "{c:?}");
        age(&h0);
        age(&h1);
        let c = compact(&root, "events", &schema(), Duration::from_secs(3600), 2).unwrap();
        assert_eq!((c.hours, c.files_merged, c.rows, c.duplicates), (1, 4, 9, 1), "{c:?}");
        let mut want: Vec<String> = (0..3).flat_map(|i| (0..3).map(move |j| format!("e-{i}-{j}"))).collect();
        want.sort();
        assert_eq!(held(&h0), (want, 1), "one file, every event once");
        assert_eq!(held(&h1).1, 1, "an hour of one file is left alone");
        assert!(!h0.join(LEASE).exists());
        // Nothing more to do; dedup still finds the merged ids (a redelivery stays out).
        assert_eq!(compact(&root, "events", &schema(), Duration::from_secs(3600), 2).unwrap().hours, 0);
        let mut fresh = Writer::new(&root, "events", 1_000);
        let again = events(&fresh, &["e-1-1", "new"], 11);
        assert_eq!(fresh.add(&again).unwrap(), 1);
        fresh.flush().unwrap();

        // A file of another version (another schema) stays as it is; the others merge.
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let other = Arc::new(Schema::new(vec![Field::new("row", DataType::Int64, false)]));
        archive::write_file(&h0, "part-0-old", other.clone(), &[RecordBatch::try_new(other, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap()]).unwrap();
        age(&h0);
        let mut unchanged = Unchanged::default();
        let c = compact_with(&root, "events", &schema(), Duration::from_secs(3600), 2, &mut unchanged).unwrap();
        assert_eq!((c.hours, c.files_merged, c.files_other_schema, c.rows), (1, 2, 1, 10), "{c:?}");
        assert!(h0.join("part-0-old.parquet").exists());
        // Left: the old file and the merged one. Looked at once (once settled), then passed
        // over until the hour changes.
        age(&h0);
        let c = compact_with(&root, "events", &schema(), Duration::from_secs(3600), 2, &mut unchanged).unwrap();
        assert_eq!(c.files_other_schema, 1, "{c:?}");
        let c = compact_with(&root, "events", &schema(), Duration::from_secs(3600), 2, &mut unchanged).unwrap();
        assert_eq!(c, Compacted::default(), "not read again");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_compaction_interrupted_by_a_crash_is_finished_by_the_next_one() {
        let root = root("crash");
        let mut w = Writer::new(&root, "events", 1_000);
        flushed(&mut w, &["a1", "a2"], 1);
        flushed(&mut w, &["b1"], 2);
        let dir = Hour { n: 0 }.dir(&root, "events");
        let sources: Vec<String> = parts(&dir).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        let lease_of = |merged: &str| {
            std::fs::write(dir.join(LEASE), format!("{merged}\n{}\n", sources.join("\n"))).unwrap();
            File::options().append(true).open(dir.join(LEASE)).unwrap().set_modified(SystemTime::now() - STALE - Duration::from_secs(1)).unwrap();
        };

        // Died before the rename: the sources stand, and are merged now.
        lease_of("part-1-never-renamed.parquet");
        age(&dir);
        let c = compact(&root, "events", &schema(), Duration::from_secs(60), 2).unwrap();
        assert_eq!((c.recovered, c.hours, c.rows), (1, 1, 3), "{c:?}");
        assert_eq!(held(&dir), (vec!["a1".into(), "a2".into(), "b1".into()], 1));

        // Died after the rename: the sources go, the merged file stays.
        let merged = parts(&dir).unwrap()[0].file_name().unwrap().to_string_lossy().into_owned();
        for (s, ids) in sources.iter().zip([&["a1", "a2"][..], &["b1"][..]]) {
            archive::write_file(&dir, s.trim_end_matches(".parquet"), schema(), &[events(&w, ids, 1)]).unwrap();
        }
        assert_eq!(held(&dir).0.len(), 6, "every row twice, as a crash left it");
        lease_of(&merged);
        age(&dir);
        let c = compact(&root, "events", &schema(), Duration::from_secs(60), 2).unwrap();
        assert_eq!((c.recovered, c.hours), (1, 0), "{c:?}");
        assert_eq!(held(&dir), (vec!["a1".into(), "a2".into(), "b1".into()], 1));
        assert!(!dir.join(LEASE).exists());

        // Another compactor holds the hour (a fresh lease): left to it.
        flushed(&mut w, &["c1"], 3);
        age(&dir);
        std::fs::write(dir.join(LEASE), "").unwrap();
        let c = compact(&root, "events", &schema(), Duration::from_secs(60), 2).unwrap();
        assert_eq!((c.hours, c.hours_busy), (0, 1), "{c:?}");
        assert_eq!(held(&dir).1, 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Each chain run that raises alerts writes a file: the alerts table compacts the same way.
    #[test]
    fn alert_files_merge_too() {
        let root = root("alerts");
        let alert = |id: &str| crate::chains::Alert { id: id.into(), ts: 5, rule: "probing".into(), severity: "high".into(), session: Some("s".into()), subject: None, summary: "x".into(), evidence: vec!["e1".into(), "e2".into()] };
        for id in ["a1", "a2"] {
            crate::chains::archive(&root, &[alert(id)]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let dir = Hour { n: 0 }.dir(&root, "alerts");
        assert_eq!(parts(&dir).unwrap().len(), 2);
        age(&dir);
        let c = compact(&root, "alerts", &Arc::new(crate::alerts_schema()), Duration::from_secs(60), 2).unwrap();
        assert_eq!((c.hours, c.files_merged, c.rows, c.files_other_schema), (1, 2, 2, 0), "{c:?}");
        assert_eq!(held(&dir), (vec!["a1".into(), "a2".into()], 1));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn retention_removes_whole_days_before_the_cutoff() {
        let root = root("prune");
        let mut w = Writer::new(&root, "events", 1_000);
        let day = 24 * H;
        for d in 0..3 {
            flushed(&mut w, &[&format!("d{d}")], d * day + 5);
        }
        std::fs::create_dir_all(root.join("events").join("date=junk")).unwrap();
        let dry = prune(&root, &["events", "alerts"], "1970-01-03", true).unwrap();
        assert_eq!(dry.iter().map(|p| (p.date.as_str(), p.files)).collect::<Vec<_>>(), vec![("1970-01-01", 1), ("1970-01-02", 1)]);
        assert!(dry.iter().all(|p| p.bytes > 0 && p.table == "events"));
        assert!(root.join("events/date=1970-01-01").exists(), "a dry run removes nothing");
        assert_eq!(prune(&root, &["events"], "1970-01-03", false).unwrap(), dry);
        let left: Vec<String> = std::fs::read_dir(root.join("events")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        assert_eq!(left, vec!["date=1970-01-03", "date=junk"]);
        assert!(prune(&root, &["events"], "yesterday", false).unwrap_err().to_string().contains("YYYY-MM-DD"));
        let today = days_ago(0);
        assert!(is_date(&today) && today.as_str() > "2026-01-01", "{today}");
        assert!(days_ago(1) < today);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
