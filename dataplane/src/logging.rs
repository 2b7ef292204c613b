//! Logging that never stalls the data path. `sluice run` and `sluice stdio` write log lines
//! through a bounded queue to a writer thread: when whoever reads stderr falls behind (a
//! stalled log collector, a pipe nobody drains, an MCP client that never reads the server's
//! stderr), lines are dropped and counted — `sluice_log_lines_dropped_total`, and a warning
//! once the reader is back — instead of blocking the workers on a full pipe. Commands that
//! exit at once (`check`, `scan`, …) write synchronously, so their lines and their output stay
//! in order.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines the queue holds before it drops (a few MB of typical lines).
const QUEUE_LINES: usize = 16_384;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Flushes queued lines when dropped: hold it until the process exits, and drop it before
/// printing a last error so that the lines before it come first.
pub struct Guard(#[allow(dead_code)] Option<WorkerGuard>);

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
    let (writer, guard) = NonBlockingBuilder::default().buffered_lines_limit(QUEUE_LINES).lossy(true).thread_name("sluice-log").finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let sub = tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(colour()).with_writer(writer);
    if format == "json" {
        sub.json().init();
    } else {
        sub.init();
    }
    // Say that lines were lost once they can be read again (a warning written while the
    // reader is still stalled is itself dropped and counted; the next one carries the total).
    let _ = std::thread::Builder::new().name("sluice-log-watch".into()).spawn(|| {
        let mut told = 0;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = dropped();
            if now > told {
                tracing::warn!(dropped = now - told, total = now, "log lines dropped: stderr was not read fast enough (a stalled log collector, or a pipe nobody reads); the gateway kept serving — see sluice_log_lines_dropped_total");
                told = now;
            }
        }
    });
    Guard(Some(guard))
}

/// Colours only for a person at a terminal: a journal, a file or a collector gets plain text.
fn colour() -> bool {
    std::io::stderr().is_terminal()
}

/// Log lines dropped since start because stderr was not read fast enough.
pub fn dropped() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// The drop counter in Prometheus text.
pub fn render(s: &mut String) {
    s.push_str(&format!(
        "# HELP sluice_log_lines_dropped_total Log lines dropped because stderr was not read fast enough (the gateway does not wait for its log reader).\n# TYPE sluice_log_lines_dropped_total counter\nsluice_log_lines_dropped_total {}\n",
        dropped()
    ));
}
