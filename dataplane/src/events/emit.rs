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

/// Serialise `ev` into a framed spool record (`json` is a reusable scratch buffer).
/// `payload` is JSON text the gateway encoded itself; it is spliced in as the `payload` field
/// without being parsed again (the hot path's main saving).
fn frame(ev: &Event<'_>, payload: Option<&[u8]>, json: &mut Vec<u8>) -> Vec<u8> {
    json.clear();
    if let Err(e) = serde_json::to_writer(&mut *json, ev) {
        // Serialising our own types cannot fail short of a bug; record that it happened.
        tracing::error!(kind = ev.kind.as_str(), error = %e, "event could not be encoded");
        json.clear();
        json.extend_from_slice(br#"{"v":1,"id":"encode-error","ts":0,"kind":"other","instance":""}"#);
    } else if let (Some(p), None, Some(b'}')) = (payload, &ev.payload, json.last()) {
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
        let rec = Queued { rec: frame(ev, payload, &mut self.json.borrow_mut()), at: Instant::now() };
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
        let r = Queued { rec: frame(ev, None, &mut Vec::new()), at: Instant::now() };
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
