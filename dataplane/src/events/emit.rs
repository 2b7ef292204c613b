//! Emitting events: serialise, frame as a spool record, push onto the worker's own queue.

use super::{Queued, Recorder};
use parking_lot::Mutex;
use sluice_schema::{spool, Event};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

/// What agents and servers send ends up in an event's fields — a tool name, a request id, a
/// JSON path, a task id — each as long as a request may be; only `payload` is bounded
/// (`recording.max_payload_bytes`). An event whose fields pass this many bytes has every
/// string longer than [`CUT_TO`] cut and every list longer than [`MAX_LIST`] shortened: one
/// hostile request must not make a record too large for Kafka (a broker takes 1 MiB by
/// default) or for the analyzer's reader.
const MAX_FIELDS_BYTES: usize = 64 * 1024;
const CUT_TO: usize = 4096;
const MAX_LIST: usize = 1000;

/// Cut the long strings and lists of the encoded event in `json` (its `payload`, bounded on
/// its own, is kept); false if there was nothing to cut.
fn shrink(json: &mut Vec<u8>) -> bool {
    fn walk(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) if s.len() > CUT_TO => {
                let keep = (0..=CUT_TO).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                let cut = s.len() - keep;
                s.truncate(keep);
                s.push_str(&format!("…[{cut} bytes cut]"));
                true
            }
            serde_json::Value::Array(a) => {
                let long = a.len() > MAX_LIST;
                a.truncate(MAX_LIST);
                a.iter_mut().fold(long, |any, x| walk(x) | any)
            }
            serde_json::Value::Object(m) => m.iter_mut().filter(|(k, _)| k.as_str() != "payload").fold(false, |any, (_, x)| walk(x) | any),
            _ => false,
        }
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(json) else { return false };
    if !walk(&mut v) {
        return false;
    }
    json.clear();
    serde_json::to_writer(&mut *json, &v).is_ok()
}

/// Serialise `ev` into a framed spool record (`json` is a reusable scratch buffer).
/// `payload` is JSON text the gateway encoded itself; it is spliced in as the `payload` field
/// without being parsed again (the hot path's main saving).
fn frame(ev: &Event<'_>, payload: Option<&[u8]>, json: &mut Vec<u8>, rec: &Recorder) -> Vec<u8> {
    json.clear();
    let encoded = serde_json::to_writer(&mut *json, ev);
    if let Err(e) = &encoded {
        // Serialising our own types cannot fail short of a bug; record that it happened.
        tracing::error!(kind = ev.kind.as_str(), error = %e, "event could not be encoded");
        json.clear();
        json.extend_from_slice(br#"{"v":1,"id":"encode-error","ts":0,"kind":"other","instance":""}"#);
    } else if json.len() > MAX_FIELDS_BYTES && shrink(json) {
        rec.counters.shrunk.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(kind = ev.kind.as_str(), id = %ev.id, "event fields longer than 4 KiB cut before recording (each cut says how much it left out)");
    }
    if let (Ok(()), Some(p), None, Some(b'}')) = (&encoded, payload, &ev.payload, json.last()) {
        json.pop();
        json.extend_from_slice(br#","payload":"#);
        json.extend_from_slice(p);
        json.push(b'}');
    }
    let key = ev.key().as_bytes();
    let mut rec = Vec::with_capacity(spool::FRAME_LEN + 3 + key.len() + json.len());
    let flags = if ev.kind.is_approval() { spool::FLAG_APPROVAL } else { 0 };
    spool::encode(&mut rec, flags, key, json);
    rec
}

/// A worker's handle: its queue and overflow list. `!Send`: it lives on its worker's core.
pub struct Emitter {
    rec: Arc<Recorder>,
    worker: usize,
    tx: SyncSender<Queued>,
    overflow: RefCell<VecDeque<Queued>>,
    overflow_bytes: Cell<usize>,
    json: RefCell<Vec<u8>>,
}

impl Emitter {
    pub(super) fn new(rec: Arc<Recorder>, worker: usize, tx: SyncSender<Queued>) -> Self {
        Emitter { rec, worker, tx, overflow: RefCell::new(VecDeque::new()), overflow_bytes: Cell::new(0), json: RefCell::new(Vec::with_capacity(4096)) }
    }

    pub fn recorder(&self) -> &Recorder {
        &self.rec
    }

    /// Whether this worker may start a new request: the spool takes events and this worker's
    /// overflow is under its limit.
    pub fn accepting(&self) -> bool {
        self.rec.accepting() && self.overflow_bytes.get() < self.rec.cfg.overflow_bytes
    }

    /// Record one event. Never blocks.
    pub fn emit(&self, ev: &Event<'_>) {
        self.emit_with_payload(ev, None)
    }

    /// Record one event whose payload is JSON text the gateway encoded (not parsed again).
    pub fn emit_with_payload(&self, ev: &Event<'_>, payload: Option<&[u8]>) {
        let rec = Queued { rec: frame(ev, payload, &mut self.json.borrow_mut(), &self.rec), at: Instant::now() };
        self.rec.counters.emitted.fetch_add(1, Ordering::Relaxed);
        if !self.overflow.borrow().is_empty() {
            self.flush_overflow();
        }
        if !self.overflow.borrow().is_empty() {
            return self.spill(rec);
        }
        match self.tx.try_send(rec) {
            Ok(()) => self.rec.wake_writer(),
            Err(TrySendError::Full(r)) => self.spill(r),
            Err(TrySendError::Disconnected(_)) => self.lost_stopped(),
        }
    }

    /// Keep a record in order behind the queue; lose it only past twice the overflow limit.
    fn spill(&self, r: Queued) {
        let c = &self.rec.counters;
        c.overflowed.fetch_add(1, Ordering::Relaxed);
        let limit = self.rec.cfg.overflow_bytes;
        let len = r.rec.len();
        if self.overflow_bytes.get() + len > 2 * limit {
            c.lost_overflow.fetch_add(1, Ordering::Relaxed);
            tracing::error!(worker = self.worker, overflow_bytes = self.overflow_bytes.get(), "event lost: the spool writer is too far behind (recording.overflow_mib × 2 reached)");
            return;
        }
        if self.overflow_bytes.get() < limit && self.overflow_bytes.get() + len >= limit {
            tracing::warn!(worker = self.worker, "recording overflow limit reached: new requests are refused until the spool catches up");
        }
        self.overflow_bytes.set(self.overflow_bytes.get() + len);
        let mut of = self.overflow.borrow_mut();
        if of.is_empty() {
            self.rec.unqueued.set(self.worker, Some(r.at));
        }
        of.push_back(r);
    }

    fn lost_stopped(&self) {
        self.rec.counters.lost_stopped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(worker = self.worker, "event lost: the recorder has stopped");
    }

    /// Move overflowed records into the queue, oldest first, while it has room. Workers call
    /// this on every emit and from a periodic task.
    pub fn flush_overflow(&self) {
        let mut of = self.overflow.borrow_mut();
        let mut moved = false;
        while let Some(r) = of.pop_front() {
            let len = r.rec.len();
            match self.tx.try_send(r) {
                Ok(()) => {
                    self.overflow_bytes.set(self.overflow_bytes.get() - len);
                    moved = true;
                }
                Err(TrySendError::Full(r)) => {
                    of.push_front(r);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.overflow_bytes.set(self.overflow_bytes.get() - len);
                    self.lost_stopped();
                }
            }
        }
        if moved {
            self.rec.unqueued.set(self.worker, of.front().map(|r| r.at));
            self.rec.wake_writer();
        }
    }

    pub fn overflow_len(&self) -> usize {
        self.overflow.borrow().len()
    }
}

impl Drop for Emitter {
    fn drop(&mut self) {
        // A stopping worker hands over what it still holds; the writer drains before it stops.
        for r in self.overflow.get_mut().drain(..) {
            if self.tx.send(r).is_err() {
                self.rec.counters.lost_stopped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(worker = self.worker, "event lost: the recorder stopped before a worker's overflow was written");
            }
        }
        self.rec.unqueued.set(self.worker, None);
        self.rec.wake_writer();
    }
}

/// For events from outside the workers (lifecycle, housekeeping): a shared queue behind a
/// mutex, off the request path. Blocks briefly when that queue is full rather than lose.
pub struct ProcessEmitter<'a> {
    rec: &'a Recorder,
    tx: &'a Mutex<Option<SyncSender<Queued>>>,
}

impl<'a> ProcessEmitter<'a> {
    pub(super) fn new(rec: &'a Recorder, tx: &'a Mutex<Option<SyncSender<Queued>>>) -> Self {
        ProcessEmitter { rec, tx }
    }

    pub fn emit(&self, ev: &Event<'_>) {
        let r = Queued { rec: frame(ev, None, &mut Vec::new(), self.rec), at: Instant::now() };
        self.rec.counters.emitted.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.lock().as_ref().map(|tx| tx.send(r).is_ok());
        if sent == Some(true) {
            self.rec.wake_writer();
        } else {
            self.rec.counters.lost_stopped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(kind = ev.kind.as_str(), "event lost: the recorder has stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_lists_shortened_and_the_payload_kept() {
        let name = "é".repeat(40_000); // 80,000 bytes, two per char: the cut lands on a boundary
        let findings: Vec<_> = (0..1500).map(|i| serde_json::json!({"rule": "r", "kind": "email", "category": "pii", "severity": "medium", "path": format!("/{i}"), "action": "mask"})).collect();
        let payload = serde_json::json!({"text": "p".repeat(200_000)});
        let doc = serde_json::json!({"v": 1, "id": "x", "ts": 1, "instance": "gw", "kind": "request", "tool": name, "rpc_id": "7", "findings": findings, "payload": payload});
        let mut json = serde_json::to_vec(&doc).unwrap();
        assert!(shrink(&mut json));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let tool = v["tool"].as_str().unwrap();
        assert!(tool.starts_with(&"é".repeat(2048)) && tool.ends_with("…[75904 bytes cut]"), "{}", &tool[tool.len() - 40..]);
        assert_eq!(v["findings"].as_array().unwrap().len(), MAX_LIST);
        assert_eq!((v["rpc_id"].as_str(), &v["payload"]), (Some("7"), &payload), "short fields and the payload as they were");
        // Sent to a reader of events, it is still an event.
        let e: sluice_schema::OwnedEvent = serde_json::from_slice(&json).unwrap();
        assert_eq!(e.rpc_id.as_deref(), Some("7"));

        let small = br#"{"v":1,"id":"x","kind":"request","tool":"t"}"#;
        let mut json = small.to_vec();
        assert!(!shrink(&mut json));
        assert_eq!(json, small, "nothing to cut: the encoding untouched");
    }
}
