//! Per-worker counters, written only by their own worker and read by the admin listener.
//! Gauges are relaxed atomics; labelled counters and histograms sit behind a per-worker mutex
//! that only its worker and a scrape ever take (never shared between workers).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Latency histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Labelled {
    requests: HashMap<(Arc<str>, &'static str, u16), u64>,
    latency: HashMap<Arc<str>, Histogram>,
    messages: HashMap<(Arc<str>, &'static str, &'static str), u64>,
    findings: HashMap<(Arc<str>, &'static str, String, &'static str), u64>,
    /// (route, direction, action) → rule id → count: looked up by the rule's `&str`, so a
    /// decision allocates only the first time its rule is counted.
    decisions: HashMap<(Arc<str>, &'static str, &'static str), HashMap<String, u64>>,
}

#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub active_connections: AtomicI64,
    pub active_streams: AtomicI64,
    pub connections_total: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub upstream_reused: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub timeouts: AtomicU64,
    /// Connections refused at `limits.max_connections`.
    pub connections_refused: AtomicU64,
    /// Request bodies refused at `limits.max_buffered_bytes`.
    pub bodies_refused: AtomicU64,
    /// Request-body bytes held now.
    pub buffered_bytes: AtomicI64,
    labelled: Mutex<Labelled>,
}

/// HTTP methods as static label values (anything else is `other`).
pub fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl WorkerMetrics {
    pub fn request_done(&self, route: &Arc<str>, method: &'static str, status: u16, elapsed: Duration) {
        let mut l = self.labelled.lock();
        *l.requests.entry((route.clone(), method, status)).or_default() += 1;
        let h = l.latency.entry(route.clone()).or_default();
        let secs = elapsed.as_secs_f64();
        let idx = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        h.counts[idx] += 1;
        h.sum += secs;
        h.count += 1;
    }

    pub fn messages(&self, route: &Arc<str>, direction: &'static str, kind: &'static str, n: u64) {
        *self.labelled.lock().messages.entry((route.clone(), direction, kind)).or_default() += n;
    }

    /// A detection finding (kind names come from the rule packs; the value never appears).
    /// A policy decision (`rule`: the deciding rule's id, `default` when none decided).
    pub fn decision(&self, route: &Arc<str>, direction: &'static str, action: &'static str, rule: &str) {
        let mut l = self.labelled.lock();
        let by_rule = l.decisions.entry((route.clone(), direction, action)).or_default();
        match by_rule.get_mut(rule) {
            Some(n) => *n += 1,
            None => {
                by_rule.insert(rule.to_owned(), 1);
            }
        }
    }

    pub fn finding(&self, route: &Arc<str>, direction: &'static str, kind: &str, action: &'static str) {
        let mut l = self.labelled.lock();
        match l.findings.get_mut(&(route.clone(), direction, kind.to_owned(), action)) {
            Some(n) => *n += 1,
            None => {
                l.findings.insert((route.clone(), direction, kind.to_owned(), action), 1);
            }
        }
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Render all workers' metrics in the Prometheus text format (0.0.4).
pub fn render(workers: &[Arc<WorkerMetrics>], sessions: usize, out: &mut String) {
    let gauge = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&WorkerMetrics) -> i64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, w) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", f(w));
        }
    };
    let counter = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&WorkerMetrics) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, w) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", f(w));
        }
    };
    gauge(out, "sluice_active_connections", "Open downstream connections.", &|w| w.active_connections.load(Ordering::Relaxed));
    gauge(out, "sluice_active_streams", "Open SSE streams being relayed.", &|w| w.active_streams.load(Ordering::Relaxed));
    counter(out, "sluice_connections_total", "Downstream connections accepted.", &|w| w.connections_total.load(Ordering::Relaxed));
    counter(out, "sluice_upstream_connects_total", "New upstream connections.", &|w| w.upstream_connects.load(Ordering::Relaxed));
    counter(out, "sluice_upstream_reused_total", "Requests sent on a pooled upstream connection.", &|w| w.upstream_reused.load(Ordering::Relaxed));
    counter(out, "sluice_upstream_errors_total", "Upstream connect, write or read failures.", &|w| w.upstream_errors.load(Ordering::Relaxed));
    counter(out, "sluice_timeouts_total", "Requests or streams ended by a timeout.", &|w| w.timeouts.load(Ordering::Relaxed));
    counter(out, "sluice_connections_refused_total", "Connections refused (503) at limits.max_connections.", &|w| w.connections_refused.load(Ordering::Relaxed));
    counter(out, "sluice_bodies_refused_total", "Request bodies refused (503) at limits.max_buffered_bytes.", &|w| w.bodies_refused.load(Ordering::Relaxed));
    gauge(out, "sluice_buffered_bytes", "Request-body bytes held (counted against limits.max_buffered_bytes).", &|w| w.buffered_bytes.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP sluice_sessions Live MCP sessions tracked.\n# TYPE sluice_sessions gauge\nsluice_sessions {sessions}");

    let _ = writeln!(out, "# HELP sluice_requests_total Requests answered, by route, method and status.\n# TYPE sluice_requests_total counter");
    let snaps: Vec<_> = workers.iter().map(|w| {
        let l = w.labelled.lock();
        (l.requests.clone(), l.latency.clone(), l.messages.clone(), l.findings.clone(), l.decisions.clone())
    }).collect();
    for (i, (req, _, _, _, _)) in snaps.iter().enumerate() {
        let mut rows: Vec<_> = req.iter().collect();
        rows.sort();
        for ((route, method, status), n) in rows {
            let _ = writeln!(out, "sluice_requests_total{{worker=\"{i}\",route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}");
        }
    }
    let _ = writeln!(out, "# HELP sluice_messages_total JSON-RPC messages seen, by route, direction and kind.\n# TYPE sluice_messages_total counter");
    for (i, (_, _, msgs, _, _)) in snaps.iter().enumerate() {
        let mut rows: Vec<_> = msgs.iter().collect();
        rows.sort();
        for ((route, dir, kind), n) in rows {
            let _ = writeln!(out, "sluice_messages_total{{worker=\"{i}\",route=\"{route}\",direction=\"{dir}\",kind=\"{kind}\"}} {n}");
        }
    }
    let _ = writeln!(out, "# HELP sluice_findings_total Detection findings, by route, direction, kind and action taken.\n# TYPE sluice_findings_total counter");
    for (i, (_, _, _, found, _)) in snaps.iter().enumerate() {
        let mut rows: Vec<_> = found.iter().collect();
        rows.sort();
        for ((route, dir, kind, action), n) in rows {
            let _ = writeln!(out, "sluice_findings_total{{worker=\"{i}\",route=\"{route}\",direction=\"{dir}\",kind=\"{kind}\",action=\"{action}\"}} {n}");
        }
    }
    let _ = writeln!(out, "# HELP sluice_policy_decisions_total Policy decisions, by route, direction (request: what agents send; response: answers and what servers ask agents), action and deciding rule (default: none decided).\n# TYPE sluice_policy_decisions_total counter");
    for (i, (_, _, _, _, decided)) in snaps.iter().enumerate() {
        let mut rows: Vec<_> = decided.iter().flat_map(|((route, dir, action), by_rule)| by_rule.iter().map(move |(rule, n)| (route, dir, action, rule, n))).collect();
        rows.sort();
        for (route, dir, action, rule, n) in rows {
            // Rule ids are letters, digits, '-', '_' and '.' (the policy file is checked): no escaping.
            let _ = writeln!(out, "sluice_policy_decisions_total{{worker=\"{i}\",route=\"{route}\",direction=\"{dir}\",action=\"{action}\",rule=\"{rule}\"}} {n}");
        }
    }
    let _ = writeln!(out, "# HELP sluice_request_duration_seconds Time from request head to the end of the response head (streams) or body.\n# TYPE sluice_request_duration_seconds histogram");
    for (i, (_, lat, _, _, _)) in snaps.iter().enumerate() {
        let mut rows: Vec<_> = lat.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        for (route, h) in rows {
            let mut cum = 0;
            for (b, c) in BUCKETS.iter().zip(h.counts.iter()) {
                cum += c;
                let _ = writeln!(out, "sluice_request_duration_seconds_bucket{{worker=\"{i}\",route=\"{route}\",le=\"{b}\"}} {cum}");
            }
            let _ = writeln!(out, "sluice_request_duration_seconds_bucket{{worker=\"{i}\",route=\"{route}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "sluice_request_duration_seconds_sum{{worker=\"{i}\",route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "sluice_request_duration_seconds_count{{worker=\"{i}\",route=\"{route}\"}} {}", h.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let w = Arc::new(WorkerMetrics::default());
        let r: Arc<str> = Arc::from("mcp");
        w.request_done(&r, "POST", 200, Duration::from_micros(300));
        w.request_done(&r, "POST", 200, Duration::from_secs(10));
        w.active_connections.fetch_add(3, Ordering::Relaxed);
        let mut s = String::new();
        render(&[w], 4, &mut s);
        assert!(s.contains("sluice_requests_total{worker=\"0\",route=\"mcp\",method=\"POST\",status=\"200\"} 2"), "{s}");
        assert!(s.contains("sluice_request_duration_seconds_bucket{worker=\"0\",route=\"mcp\",le=\"0.0005\"} 1"));
        assert!(s.contains("sluice_request_duration_seconds_bucket{worker=\"0\",route=\"mcp\",le=\"5\"} 1"));
        assert!(s.contains("sluice_request_duration_seconds_bucket{worker=\"0\",route=\"mcp\",le=\"+Inf\"} 2"));
        assert!(s.contains("sluice_active_connections{worker=\"0\"} 3"));
        assert!(s.contains("sluice_sessions 4"));
    }
}
