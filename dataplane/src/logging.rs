//! Logging that never stalls the data path. `sluice run` and `sluice stdio` hand each formatted
//! line to a bounded queue that a writer thread empties every [`DRAIN_EVERY`]: when whoever
//! reads stderr falls behind (a stalled log collector, a pipe nobody drains, an MCP client
//! that never reads the server's stderr), lines are dropped and counted —
//! `sluice_log_lines_dropped_total`, and a warning once the reader is back — instead of
//! blocking the workers on a full pipe. The writer thread is never parked on the queue, so a
//! worker's line costs no wake-up (a futex call and a context switch per line, most of the
//! cost of an access-log line when the writer slept on the queue); lines reach stderr within
//! [`DRAIN_EVERY`], gathered into one `write`. Commands that exit at once (`check`, `scan`, …)
//! write synchronously, so their lines and their output stay in order.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Lines the queue holds before it drops (a few MB of typical lines).
const QUEUE_LINES: usize = 16_384;
/// How often the writer thread empties the queue.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE: OnceLock<Sender<Vec<u8>>> = OnceLock::new();

/// Flushes queued lines when dropped: hold it until the process exits, and drop it before
/// printing a last error so that the lines before it come first.
pub struct Guard(Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((stop, writer)) = self.0.take() {
            stop.store(true, Ordering::Release);
            writer.thread().unpark();
            // A reader that still does not read would hold the writer in `write` for ever: the
            // process exits anyway (what it had not taken is lost with the pipe).
            let until = Instant::now() + FINAL_WRITE;
            while !writer.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if writer.is_finished() {
                let _ = writer.join();
            }
        }
    }
}

/// How long the exit waits for the last lines to be written.
const FINAL_WRITE: Duration = Duration::from_secs(2);

/// Install the subscriber (`format`: `text` or `json`; level from `RUST_LOG`, default info);
/// `queued`: through the bounded queue, for the long-running commands.
pub fn init(format: &str, queued: bool) -> Guard {
    let filter = || tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if !queued {
        let sub = tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(colour()).with_writer(std::io::stderr);
        if format == "json" {
            sub.json().init();
        } else {
            sub.init();
        }
        return Guard(None);
    }
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
    let _ = QUEUE.set(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::Builder::new().name("sluice-log".into()).spawn(move || drain(&rx, &stop))
    };
    let sub = tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(colour()).with_writer(|| Line);
    if format == "json" {
        sub.json().init();
    } else {
        sub.init();
    }
    match writer {
        Ok(w) => Guard(Some((stop, w))),
        Err(e) => {
            // No writer thread: nothing would ever leave the queue. Say so where it can be seen.
            eprintln!("sluice: cannot start the log writer thread ({e}); log lines are dropped and counted");
            Guard(None)
        }
    }
}

/// The writer thread: every [`DRAIN_EVERY`], everything queued in one write; the drops since
/// the last report told once the lines flow again; at stop, the rest.
fn drain(rx: &Receiver<Vec<u8>>, stop: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (mut told, mut last_told) = (0, Instant::now());
    loop {
        let stopping = stop.load(Ordering::Acquire);
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
        if stopping {
            return;
        }
        let now = dropped();
        if now > told && last_told.elapsed() >= Duration::from_secs(1) {
            // Written while the reader is still stalled, this warning is dropped and counted
            // too; the next one carries the total.
            tracing::warn!(dropped = now - told, total = now, "log lines dropped: stderr was not read fast enough (a stalled log collector, or a pipe nobody reads); the gateway kept serving — see sluice_log_lines_dropped_total");
            (told, last_told) = (now, Instant::now());
        }
        std::thread::park_timeout(DRAIN_EVERY);
    }
}

/// One formatted line (the formatter writes each event whole), queued or counted as dropped.
struct Line;

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match QUEUE.get().map(|q| q.try_send(buf.to_vec())) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Colours only for a person at a terminal: a journal, a file or a collector gets plain text.
fn colour() -> bool {
    std::io::stderr().is_terminal()
}

/// Log lines dropped since start because stderr was not read fast enough.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The drop counter in Prometheus text.
pub fn render(s: &mut String) {
    s.push_str(&format!(
        "# HELP sluice_log_lines_dropped_total Log lines dropped because stderr was not read fast enough (the gateway does not wait for its log reader).\n# TYPE sluice_log_lines_dropped_total counter\nsluice_log_lines_dropped_total {}\n",
        dropped()
    ));
}
