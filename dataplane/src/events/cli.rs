//! `sluice spool`: read a spool directory offline (also while a gateway writes it).

use sluice_schema::spool::{self, Item, SegmentReader};
use std::io::Write;
use std::path::Path;

/// What a spool holds.
#[derive(Debug, Default, serde::Serialize)]
pub struct Stat {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Torn or corrupt places (the rest of each such segment is skipped).
    pub torn: u64,
    /// Records before the Kafka cursor (already delivered), when there is a cursor.
    pub delivered: Option<u64>,
    pub cursor: Option<(u64, u64)>,
}

/// Visit every readable record in order; `f(segment, end_offset, key, value)`.
fn each(dir: &Path, mut f: impl FnMut(u64, u64, &[u8], &[u8]) -> anyhow::Result<()>) -> anyhow::Result<Stat> {
    let mut st = Stat { cursor: super::kafka::read_cursor(dir), ..Stat::default() };
    let segs = spool::segments(dir)?;
    st.segments = segs.len();
    let mut delivered = 0;
    for (seq, path) in &segs {
        st.bytes += std::fs::metadata(path).map_or(0, |m| m.len());
        let mut r = SegmentReader::open(path, 0)?;
        loop {
            match r.next()? {
                Item::Record { record, end, .. } => {
                    st.records += 1;
                    if st.cursor.is_some_and(|(cs, co)| *seq < cs || (*seq == cs && end <= co)) {
                        delivered += 1;
                    }
                    f(*seq, end, record.key, record.value)?;
                }
                Item::End { at } => {
                    let len = std::fs::metadata(path).map_or(at, |m| m.len());
                    if at < len {
                        st.torn += 1;
                        eprintln!("{}: {} byte(s) of a torn record at offset {at} skipped", path.display(), len - at);
                    }
                    break;
                }
                Item::Torn { at, reason } => {
                    st.torn += 1;
                    eprintln!("{}: {reason} at offset {at}; the rest of the segment is skipped", path.display());
                    break;
                }
            }
        }
    }
    if st.cursor.is_some() {
        st.delivered = Some(delivered);
    }
    Ok(st)
}

/// Print every event as one JSON line (the spool's order).
pub fn cat(dir: &Path) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    each(dir, |_, _, _, v| {
        out.write_all(v)?;
        out.write_all(b"\n")?;
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}

/// Print the spool's summary as JSON.
pub fn stat(dir: &Path) -> anyhow::Result<Stat> {
    each(dir, |_, _, _, _| Ok(()))
}
