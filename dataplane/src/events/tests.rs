//! The recording pipeline without a broker: emit through real queues and the real writer
//! thread, then read the spool back with the format's reader.

use super::*;
use crate::config::recording::{OnFull, RecordingCfg, SpoolCfg};
use sluice_schema::spool::{segments, Item, SegmentReader};
use sluice_schema::{Event, Kind, OwnedEvent};
use std::path::{Path, PathBuf};

/// A directory for the test's spool (created by the recorder), removed when the test ends.
fn dir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new().prefix(&format!("sluice-rec-{name}-")).tempdir().unwrap();
    let d = t.path().join("spool");
    (t, d)
}

fn cfg(dir: &Path) -> RecordingCfg {
    RecordingCfg {
        max_payload_bytes: 1 << 16,
        queue_events: 1024,
        overflow_bytes: 64 << 20, // no overflow loss: these tests are about the spool
        on_full: OnFull::Refuse,
        spool: SpoolCfg {
            dir: dir.to_owned(),
            fsync_interval: Duration::from_millis(5),
            fsync_records: 100,
            segment_bytes: 1 << 20,
            segment_age: Duration::from_secs(600),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
        },
        kafka: None,
    }
}

fn event(n: usize, pad: usize) -> Event<'static> {
    let mut e = Event::new(format!("{n:026}"), n as i64, Kind::Request, "test");
    e.session = Some(format!("s{}", n % 3).into());
    e.method = Some("x".repeat(pad).into());
    e
}

/// Every event in the spool, in order, and how many torn places were skipped.
fn read_all(d: &Path) -> (Vec<OwnedEvent>, usize) {
    let mut out = Vec::new();
    let mut torn = 0;
    for (_, p) in segments(d).unwrap() {
        let mut r = SegmentReader::open(&p, 0).unwrap();
        loop {
            match r.next().unwrap() {
                Item::Record { record, .. } => out.push(serde_json::from_slice(record.value).unwrap()),
                Item::End { at } => {
                    torn += usize::from(at < std::fs::metadata(&p).unwrap().len());
                    break;
                }
                Item::Torn { .. } => {
                    torn += 1;
                    break;
                }
            }
        }
    }
    (out, torn)
}

#[test]
fn events_from_every_worker_reach_the_spool_in_order_and_segments_rotate() {
    let (_t, d) = dir("order");
    let rec = Recorder::start(cfg(&d), "test", 2).unwrap();
    let (e0, e1) = (rec.emitter(0).unwrap(), rec.emitter(1).unwrap());
    assert!(rec.emitter(0).is_none(), "a worker's queue is taken once");
    for n in 0..6000 {
        let em = if n % 2 == 0 { &e0 } else { &e1 };
        em.emit(&event(n, 500));
    }
    drop((e0, e1));
    rec.stop(Duration::from_secs(1));
    let (got, torn) = read_all(&d);
    assert_eq!(torn, 0);
    assert_eq!(got.len(), 6000);
    // Not only each worker's events in order: all of them, as emitted across the two queues
    // (and through the overflow lists: 6,000 events into queues of 1,024).
    assert_eq!(got.iter().map(|e| e.ts).collect::<Vec<_>>(), (0..6000).collect::<Vec<_>>(), "spool order is emission order");
    assert!(segments(&d).unwrap().len() >= 3, "~3.5 MB in 1 MiB segments rotates");
    assert_eq!(rec.counters.spooled.load(Ordering::Relaxed), 6000);
    assert!(rec.counters.fsyncs.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_second_gateway_cannot_share_a_spool_directory() {
    let (_t, d) = dir("lock");
    let rec = Recorder::start(cfg(&d), "a", 1).unwrap();
    let err = format!("{:#}", Recorder::start(cfg(&d), "b", 1).err().unwrap());
    assert!(err.contains("another sluice process"), "{err}");
    rec.stop(Duration::ZERO);
}

#[test]
fn a_torn_tail_after_a_crash_is_skipped_and_writing_goes_on_in_a_new_segment() {
    let (_t, d) = dir("torn");
    let rec = Recorder::start(cfg(&d), "t", 1).unwrap();
    let em = rec.emitter(0).unwrap();
    for n in 0..10 {
        em.emit(&event(n, 10));
    }
    drop(em);
    rec.stop(Duration::ZERO);
    // A crash in the middle of a write: half a record at the end of the segment.
    let last = segments(&d).unwrap().pop().unwrap().1;
    let mut half = Vec::new();
    sluice_schema::spool::encode(&mut half, 0, b"k", br#"{"v":1,"id":"torn"}"#);
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, &half[..half.len() / 2]).unwrap();
    drop(f);

    let rec = Recorder::start(cfg(&d), "t", 1).unwrap();
    let em = rec.emitter(0).unwrap();
    em.emit(&event(10, 10));
    drop(em);
    rec.stop(Duration::ZERO);
    let (got, torn) = read_all(&d);
    assert_eq!(torn, 1);
    assert_eq!(got.iter().map(|e| e.ts).collect::<Vec<_>>(), (0..11).collect::<Vec<_>>(), "never the torn record");
    let st = cli::stat(&d).unwrap();
    assert_eq!((st.records, st.torn), (11, 1));
}

#[test]
fn drop_oldest_keeps_the_spool_bounded_and_counts_every_dropped_event() {
    let (_t, d) = dir("drop");
    let mut c = cfg(&d);
    c.on_full = OnFull::DropOldest;
    c.spool.max_bytes = 2 << 20;
    let rec = Recorder::start(c, "t", 1).unwrap();
    let em = rec.emitter(0).unwrap();
    for n in 0..12_000 {
        em.emit(&event(n, 500));
        if n % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(600)); // let retention run
        }
    }
    drop(em);
    rec.stop(Duration::ZERO);
    let (got, _) = read_all(&d);
    let lost = rec.counters.lost_dropped.load(Ordering::Relaxed);
    assert!(lost > 0);
    assert_eq!(got.len() as u64 + lost, 12_000, "every event is either in the spool or counted as lost");
    let size: u64 = segments(&d).unwrap().iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
    assert!(size < 4 << 20, "spool {size} bytes");
}

#[test]
fn refuse_stops_accepting_when_the_spool_is_full_of_undelivered_events() {
    let (_t, d) = dir("refuse");
    let mut c = cfg(&d);
    c.spool.max_bytes = 2 << 20;
    let rec = Recorder::start(c, "t", 1).unwrap();
    let em = rec.emitter(0).unwrap();
    for n in 0..8_000 {
        em.emit(&event(n, 500));
    }
    // The writer has to put ~4 MB through group-commit fsyncs first. Whatever it could not take
    // while the loop above ran sits in the worker's overflow list, which a worker re-queues from
    // its periodic task (`proxy/mod.rs`); this thread is the worker, so it does the same. (Without
    // it, a writer slowed down by a parallel test run left most events in the overflow, the spool
    // stayed under max_bytes, and the test timed out.) The deadline only bounds a failing run.
    let t = std::time::Instant::now();
    while rec.accepting() && t.elapsed() < Duration::from_secs(60) {
        em.flush_overflow();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!rec.accepting() && !em.accepting(), "over max_bytes with on_full = refuse: fail closed");
    drop(em);
    rec.stop(Duration::ZERO);
    assert_eq!(read_all(&d).0.len(), 8_000, "refusing new work loses nothing already emitted");
}

#[test]
fn a_full_queue_spills_in_order_and_loses_only_past_twice_the_overflow_limit() {
    let (_t, d) = dir("spill");
    let mut c = cfg(&d);
    c.overflow_bytes = 4096;
    let rec = Recorder::start(c, "t", 1).unwrap();
    // A queue of two that nobody drains stands for a writer that is behind.
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    let em = Emitter::new(rec.clone(), 0, tx);
    for n in 0..5 {
        em.emit(&event(n, 10));
    }
    assert_eq!(em.overflow_len(), 3);
    assert_eq!(rec.counters.overflowed.load(Ordering::Relaxed), 3);
    assert!(em.accepting());
    let mut got = Vec::new();
    while got.len() < 5 {
        while let Ok(r) = rx.try_recv() {
            got.push(r);
        }
        em.flush_overflow();
    }
    let ts: Vec<i64> = got
        .iter()
        .map(|r| match sluice_schema::spool::decode(&r.rec) {
            sluice_schema::spool::Decoded::Record(rec, _) => serde_json::from_slice::<OwnedEvent>(rec.value).unwrap().ts,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ts, vec![0, 1, 2, 3, 4], "overflow goes out in order");
    // Past the limit: refuse new requests; past twice the limit: lose, counted.
    for n in 0..200 {
        em.emit(&event(n, 100));
    }
    assert!(!em.accepting());
    assert!(rec.counters.lost_overflow.load(Ordering::Relaxed) > 0);
    drop(rx);
    drop(em);
    rec.stop(Duration::ZERO);
}

#[test]
fn a_chain_of_events_across_workers_is_spooled_in_the_order_it_happened() {
    // Two workers take turns: each emits only after the other's last emit returned (as a
    // response recorded on one worker precedes the DELETE that another worker records). The
    // writer drains while they run; the spool must still hold 0, 1, 2, ... in order.
    let (_t, d) = dir("causal");
    let rec = Recorder::start(cfg(&d), "test", 2).unwrap();
    let (to_b, b_rx) = std::sync::mpsc::channel::<usize>();
    let (to_a, a_rx) = std::sync::mpsc::channel::<usize>();
    const N: usize = 4000;
    let worker = |w: usize, rx: std::sync::mpsc::Receiver<usize>, tx: std::sync::mpsc::Sender<usize>| {
        let rec = rec.clone();
        std::thread::spawn(move || {
            let em = rec.emitter(w).unwrap();
            if w == 0 {
                em.emit(&event(0, 200));
                tx.send(1).unwrap();
            }
            while let Ok(n) = rx.recv() {
                if n >= N {
                    break;
                }
                em.emit(&event(n, 200));
                let _ = tx.send(n + 1);
            }
        })
    };
    let a = worker(0, a_rx, to_b);
    let b = worker(1, b_rx, to_a);
    a.join().unwrap();
    b.join().unwrap();
    rec.stop(Duration::from_secs(1));
    let (got, torn) = read_all(&d);
    assert_eq!(torn, 0);
    let ts: Vec<i64> = got.iter().map(|e| e.ts).collect();
    let first_wrong = ts.iter().enumerate().find(|(i, t)| **t != *i as i64);
    assert_eq!(ts.len(), N, "every event spooled");
    assert!(first_wrong.is_none(), "out of order at {first_wrong:?}");
}

fn queued(n: usize, pad: usize, at: std::time::Instant) -> Queued {
    let ev = event(n, pad);
    let json = serde_json::to_vec(&ev).unwrap();
    let mut rec = Vec::new();
    sluice_schema::spool::encode(&mut rec, 0, b"k", &json);
    Queued { at, rec }
}

/// The `ts` of every record in a batch of framed records.
fn batch_ts(mut b: &[u8]) -> Vec<i64> {
    let mut out = Vec::new();
    while !b.is_empty() {
        match sluice_schema::spool::decode(b) {
            sluice_schema::spool::Decoded::Record(r, len) => {
                out.push(serde_json::from_slice::<OwnedEvent>(r.value).unwrap().ts);
                b = &b[len..];
            }
            other => panic!("{other:?}"),
        }
    }
    out
}

#[test]
fn the_merger_orders_by_stamp_holds_what_came_after_its_cutoff_and_splits_big_passes() {
    use std::time::Instant;
    let (tx0, rx0) = std::sync::mpsc::sync_channel(64);
    let (tx1, rx1) = std::sync::mpsc::sync_channel(64);
    let rxs = [rx0, rx1];
    let t = Instant::now().checked_sub(Duration::from_secs(1)).unwrap(); // all in the past
    let ms = |n: u64| t + Duration::from_millis(n);
    // Queue 1 holds the older events of an interleaving; each queue is in order on its own.
    for (n, q) in [(0, 1), (1, 0), (2, 1), (3, 1), (4, 0), (5, 0)] {
        let tx = if q == 0 { &tx0 } else { &tx1 };
        tx.send(queued(n, 10, ms(n as u64))).unwrap();
    }
    // Stamped after the next pass's cutoff (a record pushed while the pass ran).
    tx0.send(queued(7, 10, Instant::now() + Duration::from_secs(3600))).unwrap();
    let mut m = writer::Merger::new(Arc::new(writer::Unqueued::new(2)));
    let mut batch = Vec::new();
    let f = m.fill(&rxs, &mut batch);
    assert_eq!(batch_ts(&batch), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(f.records, 6);
    assert!(f.pending, "a held record is pending");
    assert!(!f.closed);
    // An older record that arrives now goes before the held one only if stamped before it.
    tx1.send(queued(6, 10, Instant::now())).unwrap();
    batch.clear();
    let f = m.fill(&rxs, &mut batch);
    assert_eq!(batch_ts(&batch), vec![6], "the held record waits until the clock passes it");
    assert!(f.pending);

    // A pass bigger than one batch: the rest stays ahead of anything newer.
    let (tx2, rx2) = std::sync::mpsc::sync_channel(4096);
    for n in 0..8 {
        tx2.send(queued(100 + n, 300 * 1024, t + Duration::from_micros(n as u64))).unwrap();
    }
    let rxs = [rx2];
    let mut m = writer::Merger::new(Arc::new(writer::Unqueued::new(1)));
    let mut seen = Vec::new();
    loop {
        batch.clear();
        let f = m.fill(&rxs, &mut batch);
        assert!(batch.len() < 2 * (1 << 20), "a batch stops after about 1 MiB");
        if f.records == 0 {
            break;
        }
        if seen.is_empty() {
            assert!(f.pending && f.records < 8, "8 × 300 KiB does not fit one batch");
            // Newer than everything already taken: must come after it.
            tx2.send(queued(200, 10, Instant::now())).unwrap();
        }
        seen.extend(batch_ts(&batch));
    }
    assert_eq!(seen, (100..108).chain([200]).collect::<Vec<_>>());
    drop(tx2);
    batch.clear();
    assert!(m.fill(&rxs, &mut batch).closed, "a disconnected, empty queue reports closed");
    drop((tx0, tx1));
}

#[test]
fn the_merger_holds_back_what_came_after_an_overflowed_record() {
    use std::time::Instant;
    let unqueued = Arc::new(writer::Unqueued::new(2));
    let t = Instant::now();
    let us = |n: u64| t + Duration::from_micros(n);
    let (tx0, rx0) = std::sync::mpsc::sync_channel(64);
    let (tx1, rx1) = std::sync::mpsc::sync_channel(64);
    let rxs = [rx0, rx1];
    // Worker 0 emitted 1 and 2 into its queue, then 3 and 4 went to its overflow list (queue
    // full); worker 1 emitted 5 afterwards (e.g. the DELETE that ends the session).
    tx0.send(queued(1, 10, us(1))).unwrap();
    tx0.send(queued(2, 10, us(2))).unwrap();
    unqueued.set(0, Some(us(3)));
    tx1.send(queued(5, 10, us(5))).unwrap();
    std::thread::sleep(Duration::from_millis(2)); // every stamp before the cutoff
    let mut m = writer::Merger::new(unqueued.clone());
    let mut batch = Vec::new();
    let f = m.fill(&rxs, &mut batch);
    assert_eq!(batch_ts(&batch), vec![1, 2], "5 waits for the overflowed 3");
    assert!(!f.pending && !f.closed, "waiting on a worker is not busy work");
    batch.clear();
    assert_eq!(m.fill(&rxs, &mut batch).records, 0, "still overflowed: still held");
    // Worker 0 moves 3 into its queue (4 stays in overflow), then updates its stamp.
    tx0.send(queued(3, 10, us(3))).unwrap();
    unqueued.set(0, Some(us(4)));
    let f = m.fill(&rxs, &mut batch);
    assert_eq!(batch_ts(&batch), vec![3]);
    assert!(!f.pending);
    tx0.send(queued(4, 10, us(4))).unwrap();
    unqueued.set(0, None);
    batch.clear();
    m.fill(&rxs, &mut batch);
    assert_eq!(batch_ts(&batch), vec![4, 5]);
    drop((tx0, tx1));
    batch.clear();
    assert!(m.fill(&rxs, &mut batch).closed);
}
