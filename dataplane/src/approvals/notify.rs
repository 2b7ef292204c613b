//! Telling reviewers of what waits for them: every `[[approvals.notify]]` webhook gets a POST
//! when a call is held (`requested`), decided (`decided`) or left undecided (`expired`) —
//! without it a reviewer learns of a held call only by watching the page, and the call expires
//! meanwhile — and when a tool's definition changed or a new one is held for review
//! (`pin_changed`: a rug pull blocks the tool for every agent until someone accepts it).
//!
//! Never on a worker: a step is put on a bounded queue (never waited on; a full queue drops
//! the note, counted and logged) that one thread empties in order, trying each webhook up to
//! three times (then 1 s and 4 s later) with a 5 s timeout. What a note says is what the record
//! holds (masked arguments, the digest, never a raw value); webhook URLs are secrets and appear
//! in no log line, metric or error (webhooks are named by `name`).

use super::Entry;
use crate::config::approvals::ApprovalsCfg;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Notes waiting for the thread.
const QUEUE: usize = 1024;
/// One POST's limit, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Waits before the second and third tries.
const RETRY_AFTER: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];
/// Longest argument text a chat message quotes.
const MAX_ARGS_TEXT: usize = 1500;

/// What a webhook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"source": "sluice", "step", "instance", "page", "approval": {…}}`: the approval as
    /// `GET /approvals` lists it.
    #[default]
    Json,
    /// `{"text": "…"}` in Slack's markup (Slack, Mattermost, Rocket.Chat incoming webhooks).
    Slack,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Slack => "slack",
        }
    }
}

/// What a webhook may be told of: an approval step, or a pin change waiting for a reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Requested = 0,
    Decided = 1,
    Expired = 2,
    PinChanged = 3,
}

/// Every step, in index order.
pub const STEPS: [Step; 4] = [Step::Requested, Step::Decided, Step::Expired, Step::PinChanged];

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        STEPS.into_iter().find(|x| x.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Requested => "requested",
            Step::Decided => "decided",
            Step::Expired => "expired",
            Step::PinChanged => "pin_changed",
        }
    }
}

/// A tool definition (or an upstream's instructions) that changed since it was pinned, or a
/// new one held for review (`pins.first_sight = "hold"`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PinNote {
    pub upstream: String,
    pub route: String,
    pub tool: String,
    /// `changed`, or `added` (held).
    pub change: &'static str,
    pub old_digest: Option<String>,
    pub new_digest: Option<String>,
    /// Hidden and refused until accepted (`pins.on_change = "block"`), or only recorded.
    pub blocked: bool,
    /// The command that accepts it.
    pub accept: String,
}

/// One configured webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// A secret: never logged (`Debug` hides it).
    pub url: String,
    pub format: Format,
    /// Told of which steps, by [`Step`] index.
    pub on: [bool; 4],
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target {{ name: {:?}, url: ***, format: {:?}, on: {:?} }}", self.name, self.format, self.on)
    }
}

struct Note {
    step: Step,
    about: About,
    cfg: Arc<ApprovalsCfg>,
    instance: String,
}

enum About {
    Approval(Box<Entry>),
    Pin(PinNote),
}

impl Note {
    /// Names the note in log lines.
    fn label(&self) -> String {
        match &self.about {
            About::Approval(e) => format!("approval {}", e.id),
            About::Pin(p) => format!("pin {}/{}", p.upstream, p.tool),
        }
    }
}

/// Delivered and failed notes per webhook name.
#[derive(Default)]
struct Counts {
    sent: u64,
    failed: u64,
}

/// The queue to the notifying thread, and what became of the notes.
pub struct Notifier {
    tx: Sender<Note>,
    rx: Mutex<Option<Receiver<Note>>>,
    counts: Arc<Mutex<BTreeMap<String, Counts>>>,
    dropped: AtomicU64,
    retry_after: [Duration; 2],
}

impl Default for Notifier {
    fn default() -> Self {
        let (tx, rx) = bounded(QUEUE);
        Notifier { tx, rx: Mutex::new(Some(rx)), counts: Arc::default(), dropped: AtomicU64::new(0), retry_after: RETRY_AFTER }
    }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Notifier {{ queued: {} }}", self.tx.len())
    }
}

impl Notifier {
    /// Start the thread that sends what is queued (once; later calls do nothing).
    pub fn start(&self) -> std::io::Result<()> {
        let Some(rx) = self.rx.lock().take() else { return Ok(()) };
        let (counts, retry_after) = (self.counts.clone(), self.retry_after);
        std::thread::Builder::new().name("sluice-notify".into()).spawn(move || {
            let make = |o: &crate::tls::Outbound| -> ureq::Agent { ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).http_status_as_error(false).max_redirects(0).tls_config(o.tls()).build().into() };
            let (mut roots, mut agent) = (crate::tls::Outbound::default(), make(&Default::default()));
            for note in rx {
                // A reload may trust other roots.
                if note.cfg.outbound != roots {
                    roots = note.cfg.outbound.clone();
                    agent = make(&roots);
                }
                for t in note.cfg.notify.iter().filter(|t| t.on[note.step as usize]) {
                    let body = body(t.format, &note);
                    let ok = deliver(&agent, t, &body, &note, &retry_after);
                    let mut c = counts.lock();
                    let c = c.entry(t.name.clone()).or_default();
                    if ok {
                        c.sent += 1;
                    } else {
                        c.failed += 1;
                    }
                }
            }
        })?;
        Ok(())
    }

    /// Queue `step` of `entry` for the webhooks of `cfg` that want it. Never waits.
    pub fn tell(&self, step: Step, entry: &Entry, cfg: &Arc<ApprovalsCfg>, instance: &str) {
        self.queue(step, || About::Approval(Box::new(entry.clone())), cfg, instance);
    }

    /// Queue a pin change for the webhooks of `cfg` that want it. Never waits.
    pub fn tell_pin(&self, pin: impl FnOnce() -> PinNote, cfg: &Arc<ApprovalsCfg>, instance: &str) {
        self.queue(Step::PinChanged, || About::Pin(pin()), cfg, instance);
    }

    fn queue(&self, step: Step, about: impl FnOnce() -> About, cfg: &Arc<ApprovalsCfg>, instance: &str) {
        if !cfg.notify.iter().any(|t| t.on[step as usize]) {
            return;
        }
        let note = Note { step, about: about(), cfg: cfg.clone(), instance: instance.to_owned() };
        match self.tx.try_send(note) {
            Ok(()) => {}
            Err(TrySendError::Full(n)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(about = %n.label(), step = step.name(), dropped, "reviewer notification dropped: {QUEUE} are waiting for slow or unreachable webhooks (it is still on the approvals page, `sluice pins list` and in the record)");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP sluice_approval_notifications_total Notes to reviewers (approval steps, pin changes) posted to each webhook: sent (2xx), failed (after three tries).\n# TYPE sluice_approval_notifications_total counter\n");
        for (name, c) in self.counts.lock().iter() {
            let name = name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "sluice_approval_notifications_total{{webhook=\"{name}\",result=\"sent\"}} {}", c.sent);
            let _ = writeln!(out, "sluice_approval_notifications_total{{webhook=\"{name}\",result=\"failed\"}} {}", c.failed);
        }
        let _ = writeln!(
            out,
            "# HELP sluice_approval_notifications_dropped_total Notes to reviewers not posted because the queue to the webhooks was full.\n# TYPE sluice_approval_notifications_dropped_total counter\nsluice_approval_notifications_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
    }
}

/// POST `body`, trying three times; a 2xx answer is delivered.
fn deliver(agent: &ureq::Agent, t: &Target, body: &str, note: &Note, retry_after: &[Duration]) -> bool {
    let mut last = String::new();
    for attempt in 0..=retry_after.len() {
        if attempt > 0 {
            std::thread::sleep(retry_after[attempt - 1]);
        }
        match agent.post(&t.url).content_type("application/json").send(body) {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => last = format!("answered HTTP {}", r.status().as_u16()),
            Err(e) => last = without_url(&e.to_string(), &t.url),
        }
    }
    tracing::warn!(webhook = %t.name, about = %note.label(), step = note.step.name(), error = %last, "reviewer notification not delivered after three tries");
    false
}

/// An error text with the webhook's URL, and the path that holds its secret, taken out (an
/// error about a malformed address may quote it).
fn without_url(error: &str, url: &str) -> String {
    let path = url.split("://").nth(1).and_then(|r| r.find('/').map(|i| &r[i..])).filter(|p| p.len() > 1);
    let mut out = error.replace(url, "<webhook URL>");
    if let Some(p) = path {
        out = out.replace(p, "/<secret>");
    }
    out
}

/// What a webhook of `format` is sent for `note`.
fn body(format: Format, note: &Note) -> String {
    match format {
        Format::Json => {
            let mut v = serde_json::json!({ "source": "sluice", "step": note.step.name(), "instance": note.instance });
            match &note.about {
                About::Approval(e) => {
                    v["page"] = serde_json::json!(note.cfg.page_url);
                    v["approval"] = serde_json::to_value(e).unwrap_or_default();
                }
                About::Pin(p) => v["pin"] = serde_json::to_value(p).unwrap_or_default(),
            }
            v.to_string()
        }
        Format::Slack => serde_json::json!({ "text": slack_text(note) }).to_string(),
    }
}

/// Slack's markup: `&`, `<` and `>` are escaped in everything quoted, so a tool name or an
/// argument cannot make a link or a mention.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn when(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(|| us.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn slack_text(note: &Note) -> String {
    let e = match &note.about {
        About::Approval(e) => e,
        About::Pin(p) => return slack_pin_text(p, &note.instance),
    };
    let (subject, tool, id) = (esc(&e.subject), esc(&e.tool), esc(&e.id));
    let approvers = esc(&e.approvers.join(" or "));
    let page = note.cfg.page_url.as_deref().map(|u| format!("<{}|approvals page>", esc(u)));
    match (note.step, &e.state) {
        (Step::Requested, _) => {
            let mut args = e.arguments.to_string();
            if args.len() > MAX_ARGS_TEXT {
                let mut cut = MAX_ARGS_TEXT;
                while !args.is_char_boundary(cut) {
                    cut -= 1;
                }
                args.truncate(cut);
                args.push('…');
            }
            // A code block ends at three back-quotes: none may come from the arguments.
            let args = esc(&args).replace("```", "`\u{200b}``");
            let decide = match page {
                Some(p) => format!("{p}, or `sluice approvals approve {id}`"),
                None => format!("`sluice approvals approve {id}` (or `deny {id} --reason …`)"),
            };
            format!(
                ":hourglass_flowing_sand: *Approval needed*: `{subject}` calls `{tool}` (route `{}`, rule `{}`, gateway {})\nArguments (masked): ```{args}```\n{approvers} may decide until {}: {decide}",
                esc(&e.route),
                esc(&e.rule),
                esc(&note.instance),
                when(e.expires_at),
            )
        }
        (Step::Decided, super::State::Approved { by, reason }) => {
            let reason = if reason.is_empty() { String::new() } else { format!(": {}", esc(reason)) };
            format!(":white_check_mark: *Approved* by `{}`{reason} — `{subject}`'s call to `{tool}` goes through (approval {id})", esc(by))
        }
        (Step::Decided, super::State::Denied { by, reason }) => {
            format!(":no_entry: *Denied* by `{}`: {} — `{subject}`'s call to `{tool}` is refused with this reason (approval {id})", esc(by), esc(reason))
        }
        (Step::Decided, state) => format!("Approval {id} of `{subject}`'s call to `{tool}` is {}", state.name()),
        (Step::Expired | Step::PinChanged, _) => format!(":alarm_clock: *Expired*: no member of {approvers} decided `{subject}`'s call to `{tool}` in time; the call was refused (approval {id})"),
    }
}

fn slack_pin_text(p: &PinNote, instance: &str) -> String {
    let (tool, upstream, route) = (esc(&p.tool), esc(&p.upstream), esc(&p.route));
    let what = match p.change {
        "added" => format!(":inbox_tray: *New tool waits for review*: `{tool}` on upstream `{upstream}` (route `{route}`, gateway {})", esc(instance)),
        _ => format!(":rotating_light: *Tool definition changed* (a rug pull?): `{tool}` on upstream `{upstream}` (route `{route}`, gateway {})", esc(instance)),
    };
    let effect = if p.blocked { "hidden from agents and its calls refused until accepted" } else { "recorded, not blocked (pins.on_change = \"log\")" };
    format!("{what}\n{effect}: review it with `sluice pins list --changed`, accept with `{}`", esc(&p.accept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::{Ask, Request, Store};
    use std::io::{BufReader, Write};

    fn entry(store: &Store, tool: &str, arguments: serde_json::Value) -> Entry {
        let approvers = ["finance".to_owned()];
        let r = Request { subject: "agent-a", agent_groups: &[], session: None, route: "/mcp", tool, method: "tools/call", arguments, args_digest: "d".repeat(64), approvers: &approvers, rule: "big-sums", timeout: Duration::from_secs(60) };
        match store.ask(r) {
            Ask::Wait { entry, .. } => *entry,
            Ask::Approved { .. } => unreachable!("a new request waits"),
        }
    }

    fn note(step: Step, entry: Entry) -> Note {
        let cfg = ApprovalsCfg { page_url: Some("https://gw.example.com:9090/approvals/ui".into()), notify: Vec::new(), ..Default::default() };
        Note { step, about: About::Approval(Box::new(entry)), cfg: Arc::new(cfg), instance: "gw-1".into() }
    }

    #[test]
    fn a_chat_message_quotes_the_record_and_cannot_be_steered_by_the_arguments() {
        let store = Store::default();
        let e = entry(&store, "add", serde_json::json!({"a": 500, "note": "<!channel> see <https://evil.example|here> & ```x```"}));
        let text = slack_text(&note(Step::Requested, e.clone()));
        assert!(text.contains("*Approval needed*: `agent-a` calls `add` (route `/mcp`, rule `big-sums`, gateway gw-1)"), "{text}");
        assert!(text.contains("<https://gw.example.com:9090/approvals/ui|approvals page>") && text.contains(&format!("sluice approvals approve {}", e.id)), "{text}");
        assert!(text.contains("finance may decide until 20"), "{text}");
        // The only link and no mention: the agent's text is escaped, and its back-quotes cannot
        // close the code block.
        assert_eq!(text.matches('<').count(), 1, "{text}");
        assert!(text.contains("&lt;!channel&gt;") && text.contains("&amp;") && !text.contains("```x```"), "{text}");
        // Long arguments are cut on a character boundary.
        let long = entry(&store, "echo", serde_json::json!({"text": "é".repeat(2000)}));
        let text = slack_text(&note(Step::Requested, long));
        assert!(text.contains('…') && text.len() < 2 * MAX_ARGS_TEXT, "{}", text.len());

        let decided = store.decide(&e.id, "rev", &["finance".into()], false, "over the <limit>").unwrap();
        let text = slack_text(&note(Step::Decided, decided));
        assert!(text.starts_with(":no_entry: *Denied* by `rev`: over the &lt;limit&gt;"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&body(Format::Json, &note(Step::Expired, e.clone()))).unwrap();
        assert_eq!((json["step"].as_str(), json["approval"]["id"].as_str(), json["approval"]["arguments"]["a"].as_i64()), (Some("expired"), Some(e.id.as_str()), Some(500)));
        assert_eq!(json["page"], "https://gw.example.com:9090/approvals/ui");
    }

    /// A webhook on a real socket that answers each POST with the next status of `statuses`.
    fn webhook(statuses: Vec<u16>) -> (String, std::sync::mpsc::Receiver<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook/T0/SECRET", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for status in statuses {
                let Ok((mut c, _)) = l.accept() else { return };
                let body = crate::test_http::request_body(&mut BufReader::new(c.try_clone().unwrap()));
                tx.send(body).unwrap();
                write!(c, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            }
        });
        (url, rx)
    }

    #[test]
    fn steps_reach_the_webhooks_that_want_them_retried_and_counted() {
        let (flaky, flaky_rx) = webhook(vec![503, 200, 200]);
        let dead = format!("http://{}/", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
        let cfg = Arc::new(ApprovalsCfg {
            page_url: None,
            outbound: Default::default(),
            notify: vec![
                Target { name: "chat".into(), url: flaky, format: Format::Slack, on: [true, false, true, false] },
                Target { name: "down".into(), url: dead, format: Format::Json, on: [true, false, false, false] },
            ],
            ..Default::default()
        });
        let n = Notifier { retry_after: [Duration::from_millis(10); 2], ..Notifier::default() };
        n.start().unwrap();
        let store = Store::default();
        let e = entry(&store, "add", serde_json::json!({"a": 500}));
        n.tell(Step::Requested, &e, &cfg, "gw-1");
        n.tell(Step::Decided, &e, &cfg, "gw-1"); // no webhook wants it: nothing queued
        n.tell(Step::Expired, &e, &cfg, "gw-1");
        let first = flaky_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let again = flaky_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, again, "a 503 is tried again with the same note");
        assert!(first.contains("Approval needed"), "{first}");
        let expired = flaky_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(expired.contains("*Expired*"), "{expired}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut m = String::new();
        while std::time::Instant::now() < deadline {
            m.clear();
            n.render(&mut m);
            if m.contains(r#"webhook="down",result="failed"} 1"#) && m.contains(r#"webhook="chat",result="sent"} 2"#) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(m.contains(r#"sluice_approval_notifications_total{webhook="chat",result="sent"} 2"#), "{m}");
        assert!(m.contains(r#"sluice_approval_notifications_total{webhook="down",result="failed"} 1"#), "{m}");
        assert!(!m.contains("SECRET") && !format!("{:?}", cfg.notify).contains("SECRET"), "webhook URLs are secrets");
    }

    #[test]
    fn a_pin_change_tells_what_waits_and_how_to_accept_it() {
        let pin = |change: &'static str, blocked: bool| PinNote {
            upstream: "u1".into(),
            route: "facts".into(),
            tool: "daily_<b>fact".into(),
            change,
            old_digest: Some("d1".into()),
            new_digest: Some("d2".into()),
            blocked,
            accept: "sluice pins accept u1 daily_<b>fact".into(),
        };
        let cfg = Arc::new(ApprovalsCfg::default());
        let note = |p| Note { step: Step::PinChanged, about: About::Pin(p), cfg: cfg.clone(), instance: "gw-1".into() };
        let text = slack_text(&note(pin("changed", true)));
        assert!(text.starts_with(":rotating_light: *Tool definition changed* (a rug pull?): `daily_&lt;b&gt;fact` on upstream `u1` (route `facts`, gateway gw-1)"), "{text}");
        assert!(text.contains("hidden from agents and its calls refused until accepted") && text.contains("`sluice pins accept u1 daily_&lt;b&gt;fact`"), "{text}");
        let text = slack_text(&note(pin("added", false)));
        assert!(text.contains("*New tool waits for review*") && text.contains("recorded, not blocked"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&body(Format::Json, &note(pin("changed", true)))).unwrap();
        assert_eq!((json["step"].as_str(), json["pin"]["tool"].as_str(), json["pin"]["new_digest"].as_str(), json["pin"]["blocked"].as_bool()), (Some("pin_changed"), Some("daily_<b>fact"), Some("d2"), Some(true)));
        assert!(json.get("approval").is_none() && json.get("page").is_none());
        assert_eq!(Step::parse("pin_changed"), Some(Step::PinChanged));
    }

    #[test]
    fn errors_never_quote_the_webhook_url() {
        let url = "https://hooks.slack.com/services/T0/B0/XYZsecret";
        assert_eq!(without_url(&format!("bad uri: {url}"), url), "bad uri: <webhook URL>");
        assert_eq!(without_url("GET /services/T0/B0/XYZsecret failed", url), "GET /<secret> failed");
        assert_eq!(without_url("connection refused", url), "connection refused");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let cfg = Arc::new(ApprovalsCfg { page_url: None, notify: vec![Target { name: "x".into(), url: "http://127.0.0.1:9/".into(), format: Format::Json, on: [true; 4] }], ..Default::default() });
        let n = Notifier::default(); // not started: nothing empties the queue
        let e = entry(&Store::default(), "add", serde_json::json!({}));
        for _ in 0..QUEUE + 3 {
            n.tell(Step::Requested, &e, &cfg, "gw-1");
        }
        let mut m = String::new();
        n.render(&mut m);
        assert!(m.contains("sluice_approval_notifications_dropped_total 3"), "{m}");
    }
}
