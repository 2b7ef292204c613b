//! The spool's on-disk format, shared by its writer (the dataplane) and its readers (the
//! dataplane's Kafka forwarder, `sluice spool`, the analyzer's `ingest --spool`).
//!
//! A spool is a directory of segment files named by a 20-digit sequence number
//! (`00000000000000000042.spool`), written in order, one at a time. A segment is a 16-byte
//! header (`SLUICESP`, format version, reserved) followed by records:
//!
//! ```text
//!  u32 LE body length │ u32 LE CRC-32C of the body │ body: u8 flags │ u16 LE key length │ key │ value
//! ```
//!
//! The value is one event's JSON; the key is its Kafka key (session id). A crash can leave a
//! partial record at the end of the segment being written: readers see it as a torn tail
//! (length past the end, or a CRC mismatch) and never return it. The writer never appends to a
//! segment it did not create, so a torn tail is always the end of its segment.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"SLUICESP";
pub const FORMAT: u32 = 1;
pub const HEADER_LEN: u64 = 16;
/// Record framing before the body.
pub const FRAME_LEN: usize = 8;
/// No record body is larger (a larger length field is corruption, not a record).
pub const MAX_BODY: usize = 64 << 20;
pub const SUFFIX: &str = ".spool";

/// Record flag: the event also goes to the approvals topic.
pub const FLAG_APPROVAL: u8 = 1;

/// The segment file header.
pub fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h
}

/// Append one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, flags: u8, key: &[u8], value: &[u8]) {
    let key = &key[..key.len().min(u16::MAX as usize)];
    let body_len = 3 + key.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(flags);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[start + FRAME_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One decoded record, borrowing from the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub flags: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// What decoding the start of a buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole record and the bytes it took.
    Record(Record<'a>, usize),
    /// The buffer ends inside a record (live tail, or a torn tail if nothing more will come).
    Incomplete,
    /// The bytes are not a record.
    Corrupt(&'static str),
}

pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < FRAME_LEN {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(3..=MAX_BODY).contains(&len) {
        return Decoded::Corrupt("record length out of range");
    }
    if buf.len() < FRAME_LEN + len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[FRAME_LEN..FRAME_LEN + len];
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt("CRC mismatch");
    }
    let klen = u16::from_le_bytes([body[1], body[2]]) as usize;
    if 3 + klen > len {
        return Decoded::Corrupt("key length past the record");
    }
    Decoded::Record(parts(body), FRAME_LEN + len)
}

/// The parts of a record body [`decode`] has checked (length, CRC, key length).
fn parts(body: &[u8]) -> Record<'_> {
    let klen = u16::from_le_bytes([body[1], body[2]]) as usize;
    Record { flags: body[0], key: &body[3..3 + klen], value: &body[3 + klen..] }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a Sluice spool segment (bad header); move it out of the spool directory")]
    BadHeader { path: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// File name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

/// The segments of a spool directory, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let io = |source| Error::Io { path: dir.to_owned(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse::<u64>().ok()) else { continue };
        out.push((seq, entry.path()));
    }
    out.sort_unstable_by_key(|(s, _)| *s);
    Ok(out)
}

/// What a segment reader produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A record; `end` is the offset just past it (a resume position).
    Record { record: Record<'a>, start: u64, end: u64 },
    /// Nothing more for now; `at` is where the next record would start.
    End { at: u64 },
    /// Bytes at `at` are not a record; the rest of the segment cannot be trusted.
    Torn { at: u64, reason: &'static str },
}

/// Reads one segment sequentially from any record boundary, with one reusable buffer.
pub struct SegmentReader {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Valid bytes in `buf` start at `head` and end at `tail`; `pos` is the file offset of `head`.
    head: usize,
    tail: usize,
    pos: u64,
}

const READ_CHUNK: usize = 256 * 1024;

impl SegmentReader {
    /// Open a segment and position it at `offset` (0 or `HEADER_LEN` both mean the first record).
    pub fn open(path: &Path, offset: u64) -> Result<Self> {
        let io = |source| Error::Io { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(io)?;
        let mut h = [0u8; HEADER_LEN as usize];
        file.read_exact(&mut h).map_err(|_| Error::BadHeader { path: path.to_owned() })?;
        if &h[..8] != MAGIC || u32::from_le_bytes([h[8], h[9], h[10], h[11]]) != FORMAT {
            return Err(Error::BadHeader { path: path.to_owned() });
        }
        let pos = offset.max(HEADER_LEN);
        file.seek(SeekFrom::Start(pos)).map_err(io)?;
        Ok(SegmentReader { path: path.to_owned(), file, buf: vec![0; READ_CHUNK], head: 0, tail: 0, pos })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next record, or where reading stopped. Reading again after `End` picks up bytes
    /// appended since (a live segment).
    #[allow(clippy::should_implement_trait)] // lending: items borrow the reader's buffer
    pub fn next(&mut self) -> Result<Item<'_>> {
        loop {
            // Decide on the buffered bytes first (borrow ends before any refill).
            let status = match decode(&self.buf[self.head..self.tail]) {
                Decoded::Record(_, n) => Ok(n),
                Decoded::Incomplete => Err(None),
                Decoded::Corrupt(r) => Err(Some(r)),
            };
            match status {
                Ok(n) => {
                    let start = self.pos;
                    let (h, t) = (self.head, self.head + n);
                    self.head = t;
                    self.pos += n as u64;
                    // Checked by `decode` above (the CRC is not computed twice).
                    let record = parts(&self.buf[h + FRAME_LEN..t]);
                    return Ok(Item::Record { record, start, end: self.pos });
                }
                Err(Some(reason)) => return Ok(Item::Torn { at: self.pos, reason }),
                Err(None) => {
                    if self.fill()? == 0 {
                        return Ok(Item::End { at: self.pos });
                    }
                }
            }
        }
    }

    /// Read more bytes after the buffered ones; grows the buffer for a large record.
    fn fill(&mut self) -> Result<usize> {
        if self.head > 0 {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        if self.tail == self.buf.len() {
            let want = (self.buf.len() * 2).min(MAX_BODY + FRAME_LEN);
            if want == self.buf.len() {
                return Ok(0);
            }
            self.buf.resize(want, 0);
        }
        let n = self.file.read(&mut self.buf[self.tail..]).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        self.tail += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn segment(dir: &Path, seq: u64, records: &[(&[u8], &[u8])]) -> (PathBuf, Vec<u8>) {
        let mut bytes = header().to_vec();
        for (k, v) in records {
            encode(&mut bytes, 0, k, v);
        }
        let p = dir.join(segment_name(seq));
        std::fs::write(&p, &bytes).unwrap();
        (p, bytes)
    }

    /// An empty directory, removed when the test ends.
    fn tmpdir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("sluice-spool-{name}-")).tempdir().unwrap()
    }

    fn values(r: &mut SegmentReader) -> (Vec<Vec<u8>>, Item<'static>) {
        let mut out = Vec::new();
        loop {
            match r.next().unwrap() {
                Item::Record { record, .. } => out.push(record.value.to_vec()),
                Item::End { at } => return (out, Item::End { at }),
                Item::Torn { at, reason } => return (out, Item::Torn { at, reason }),
            }
        }
    }

    #[test]
    fn records_round_trip_and_resume_from_an_offset() {
        let t = tmpdir("rt");
        let d = t.path().to_path_buf();
        let (p, _) = segment(&d, 1, &[(b"s1", b"{\"a\":1}"), (b"", b"{}"), (b"s2", &[b'x'; 300_000])]);
        let mut r = SegmentReader::open(&p, 0).unwrap();
        let Item::Record { record, end, .. } = r.next().unwrap() else { panic!() };
        assert_eq!((record.key, record.value), (&b"s1"[..], &b"{\"a\":1}"[..]));
        let mut r2 = SegmentReader::open(&p, end).unwrap();
        let (v, last) = values(&mut r2);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].len(), 300_000, "a record larger than the read buffer");
        assert!(matches!(last, Item::End { .. }));
        assert_eq!(segments(&d).unwrap().len(), 1);
    }

    #[test]
    fn a_torn_tail_is_never_returned_at_any_cut() {
        let t = tmpdir("torn");
        let d = t.path().to_path_buf();
        let (p, bytes) = segment(&d, 1, &[(b"k", b"first"), (b"k", b"second record")]);
        let first_end = HEADER_LEN as usize + FRAME_LEN + 3 + 1 + 5;
        for cut in HEADER_LEN as usize..bytes.len() {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let (v, last) = values(&mut SegmentReader::open(&p, 0).unwrap());
            assert_eq!(v.len(), usize::from(cut >= first_end), "cut at {cut}");
            assert!(matches!(last, Item::End { .. }), "a short tail is incomplete, not corrupt");
        }
    }

    #[test]
    fn flipped_bits_are_detected_not_misread() {
        let t = tmpdir("flip");
        let d = t.path().to_path_buf();
        let (p, bytes) = segment(&d, 1, &[(b"k", b"{\"event\":1}"), (b"k", b"{\"event\":2}")]);
        for i in HEADER_LEN as usize..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            std::fs::write(&p, &b).unwrap();
            let (v, last) = values(&mut SegmentReader::open(&p, 0).unwrap());
            for got in &v {
                assert!(got == b"{\"event\":1}" || got == b"{\"event\":2}", "byte {i}: misread {got:?}");
            }
            assert!(v.len() < 2, "byte {i}: a flipped bit went unnoticed ({last:?})");
        }
    }

    #[test]
    fn a_live_segment_yields_records_appended_later() {
        let t = tmpdir("live");
        let d = t.path().to_path_buf();
        let (p, _) = segment(&d, 7, &[(b"k", b"one")]);
        let mut r = SegmentReader::open(&p, 0).unwrap();
        assert_eq!(values(&mut r).0.len(), 1);
        let mut more = Vec::new();
        encode(&mut more, FLAG_APPROVAL, b"k", b"two");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&more[..5]).unwrap();
        assert_eq!(values(&mut r).0.len(), 0, "half a record is not returned");
        f.write_all(&more[5..]).unwrap();
        let Item::Record { record, .. } = r.next().unwrap() else { panic!() };
        assert_eq!((record.flags, record.value), (FLAG_APPROVAL, &b"two"[..]));
    }

    #[test]
    fn foreign_files_are_refused_with_a_hint() {
        let t = tmpdir("foreign");
        let d = t.path().to_path_buf();
        std::fs::write(d.join(segment_name(3)), b"hello world, not a spool").unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        let segs = segments(&d).unwrap();
        assert_eq!(segs.len(), 1);
        let e = SegmentReader::open(&segs[0].1, 0).err().unwrap().to_string();
        assert!(e.contains("not a Sluice spool segment"), "{e}");
    }
}
