//! The session event: one record per thing that happened in the gateway.
//!
//! One flat struct for every kind (fields that do not apply are absent), so the archive is one
//! wide table and a SQL audit needs no joins to see who did what. Text fields are `Cow`: the
//! dataplane serialises events that borrow from its request context (no copies on the hot
//! path), readers deserialise into owned values ([`OwnedEvent`]).
//!
//! Compatibility rules (checked by `tests/compat.rs` against the fixtures of every released
//! version in `schemas/fixtures/`): fields are only ever added, always optional or defaulted;
//! a reader ignores fields it does not know; an unknown `kind` reads as [`Kind::Other`]. A
//! change that breaks these rules needs a new major `v` and a migration in the analyzer.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The version this code writes. Readers accept every version up to this one.
pub const VERSION: u16 = 1;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An MCP session began (`initialize` answered with a session id).
    SessionStart,
    /// An MCP session ended (DELETE, upstream 404, idle timeout, eviction).
    SessionEnd,
    /// A JSON-RPC request (client → server, or a server's request to the client).
    Request,
    /// A JSON-RPC result or error.
    Response,
    /// A JSON-RPC notification, either direction.
    Notification,
    /// A request or response on a plain HTTP route (`http_method`, `http_path`; its JSON, form
    /// or text body, masked, as the payload; no payload for a body the gateway does not
    /// inspect or streams).
    Document,
    /// A stage decided something other than "forward unchanged" (mask, refuse, deny, …).
    Decision,
    /// Content inspection found something in one message.
    Findings,
    ApprovalRequested,
    ApprovalDecided,
    ApprovalExpired,
    /// The tools an upstream offered (`tools/list`), with a digest per tool.
    CatalogSnapshot,
    /// A tool's pinned description changed, appeared, vanished or collided.
    PinChange,
    GatewayStart,
    GatewayReload,
    GatewayStop,
    /// A kind written by a newer version than this reader.
    #[serde(other)]
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionStart => "session_start",
            Kind::SessionEnd => "session_end",
            Kind::Request => "request",
            Kind::Response => "response",
            Kind::Notification => "notification",
            Kind::Document => "document",
            Kind::Decision => "decision",
            Kind::Findings => "findings",
            Kind::ApprovalRequested => "approval_requested",
            Kind::ApprovalDecided => "approval_decided",
            Kind::ApprovalExpired => "approval_expired",
            Kind::CatalogSnapshot => "catalog_snapshot",
            Kind::PinChange => "pin_change",
            Kind::GatewayStart => "gateway_start",
            Kind::GatewayReload => "gateway_reload",
            Kind::GatewayStop => "gateway_stop",
            Kind::Other => "other",
        }
    }

    /// Approval steps also go to the approvals topic.
    pub fn is_approval(self) -> bool {
        matches!(self, Kind::ApprovalRequested | Kind::ApprovalDecided | Kind::ApprovalExpired)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Agent → upstream.
    Request,
    /// Upstream → agent.
    Response,
}

type Text<'a> = Cow<'a, str>;

fn is_false(b: &bool) -> bool {
    !*b
}

/// One session event. Absent fields are omitted from the JSON encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event<'a> {
    /// Schema version of the writer.
    pub v: u16,
    /// Time-ordered unique id (ULID, 26 characters); duplicates after a redelivery share it.
    pub id: Text<'a>,
    /// When it happened: microseconds since the Unix epoch, UTC.
    pub ts: i64,
    pub kind: Kind,
    /// The gateway instance (`gateway.instance`, default the host name).
    pub instance: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    /// The gateway's own session id (time-ordered; also the Kafka key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Text<'a>>,
    /// The MCP session id the upstream server chose (`Mcp-Session-Id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_session: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// JSON-RPC method (for a response: the method of the request it answers, when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Text<'a>>,
    /// JSON-RPC id, as its JSON text (`7`, `"abc"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_id: Option<Text<'a>>,
    /// Tool name of a `tools/call` (for a response: of the call it answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<Text<'a>>,
    /// The message's `params`, `result` or `error` (or the document), after masking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub payload: Option<Payload<'a>>,
    /// The payload was larger than `recording.max_payload_bytes` and is not included.
    #[serde(default, skip_serializing_if = "is_false")]
    pub payload_truncated: bool,
    /// Size of the message as forwarded, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Time since the HTTP request arrived, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// HTTP status of the exchange, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// JSON-RPC error code of an error response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval<'a>>,
    /// Tool catalog of a `catalog_snapshot`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolEntry<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinChange<'a>>,
    /// Gateway lifecycle details (`gateway_*` kinds) and session-end reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayInfo<'a>>,
    /// HTTP method of an exchange on a plain HTTP route (absent on MCP routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<Text<'a>>,
    /// Path and query of an exchange on a plain HTTP route, as the gateway forwarded them:
    /// what detection found in them is masked (also where it only logged or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<Text<'a>>,
    /// The address of the peer that sent the request (behind a load balancer: the balancer's),
    /// on the events that open a session or refuse a request: `session_start`, and the
    /// `decision` of a request refused by identity or before inspection (stage `protocol`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<Text<'a>>,
    /// The MCP task (2025-11-25) a message belongs to: the `taskId` a `tools/call` answer
    /// created, that a `tasks/get`, `tasks/result` or `tasks/cancel` request (and its answer) or
    /// a `notifications/tasks/status` names, or that a message's
    /// `_meta["io.modelcontextprotocol/related-task"]` relates it to. `[REDACTED]` when
    /// detection found something in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Text<'a>>,
    /// The `id` of the `request` event of the call this event belongs to: on the request's own
    /// `findings` and `decision` events, on its answer (`response`) and the answer's `findings`
    /// and `decision` (a server's request and the agent's answer to it likewise). JSON-RPC ids
    /// do not pair them in every case: they repeat within a session across stateless requests
    /// (MCP 2026-07-28: every client process counts from 1), and may be reused once answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Text<'a>>,
}

/// A JSON value kept as its text (embedded verbatim when the event is encoded).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload<'a>(pub Cow<'a, RawValue>);

impl PartialEq for Payload<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl<'a> Payload<'a> {
    /// Borrow JSON text that is known to be valid (the dataplane's own encoding).
    pub fn borrowed(raw: &'a RawValue) -> Self {
        Payload(Cow::Borrowed(raw))
    }

    /// Parse-check and own JSON text.
    pub fn owned(json: String) -> Result<Payload<'static>, serde_json::Error> {
        Ok(Payload(Cow::Owned(RawValue::from_string(json)?)))
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }
}

/// An event that owns its text (what readers get).
pub type OwnedEvent = Event<'static>;

impl<'a> Event<'a> {
    /// An event with only the common fields set.
    pub fn new(id: impl Into<Text<'a>>, ts: i64, kind: Kind, instance: impl Into<Text<'a>>) -> Self {
        Event {
            v: VERSION,
            id: id.into(),
            ts,
            kind,
            instance: instance.into(),
            worker: None,
            session: None,
            mcp_session: None,
            identity: None,
            route: None,
            upstream: None,
            direction: None,
            method: None,
            rpc_id: None,
            tool: None,
            payload: None,
            payload_truncated: false,
            bytes: None,
            latency_us: None,
            status: None,
            error_code: None,
            decision: None,
            findings: Vec::new(),
            approval: None,
            tools: Vec::new(),
            pin: None,
            gateway: None,
            http_method: None,
            http_path: None,
            client_ip: None,
            task: None,
            call: None,
        }
    }

    /// The Kafka key: the gateway session id, else the instance (lifecycle events).
    pub fn key(&self) -> &str {
        self.session.as_deref().unwrap_or(&self.instance)
    }
}

/// Who made the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Identity<'a> {
    pub subject: Text<'a>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<Text<'a>>,
    /// How the identity was established: `jwt`, `api_key`, `mtls`, `anonymous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Text<'a>>,
}

/// What a stage decided about one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Decision<'a> {
    /// `allow`, `mask`, `deny`, `refuse`, `require_approval`, `rate_limit`.
    pub action: Text<'a>,
    /// The stage that decided: `detect`, `policy`, `approval`, `gateway`.
    pub stage: Text<'a>,
    /// The rule that decided (policy rule id, detection rule id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Text<'a>>,
    /// The reason shown to the agent (never contains a sensitive value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text<'a>>,
}

/// One detection in one message. Never the raw value: a keyed fingerprint at most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Finding<'a> {
    pub rule: Text<'a>,
    pub kind: Text<'a>,
    /// `pii`, `secret`, `injection`, `poisoning`.
    pub category: Text<'a>,
    /// `low`, `medium`, `high`, `critical`.
    pub severity: Text<'a>,
    /// JSON path of the value inside the message (`$.params.arguments.text`).
    pub path: Text<'a>,
    /// What the gateway did: `log`, `mask`, `block`.
    pub action: Text<'a>,
    /// Keyed blake3 fingerprint of the normalised value (hex), stable within a deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Text<'a>>,
    /// `base64` or `percent` when found inside an encoded span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Text<'a>>,
}

/// One step of a human approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Approval<'a> {
    pub id: Text<'a>,
    /// `requested`, `approved`, `denied`, `expired`.
    pub state: Text<'a>,
    /// blake3 digest (hex) of the exact arguments the approval is bound to.
    pub args_digest: Text<'a>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approver_groups: Vec<Text<'a>>,
    /// The reviewer who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text<'a>>,
    /// How long the call waited, in milliseconds (decided/expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// When an undecided request expires: microseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// One tool of a catalog snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolEntry<'a> {
    pub name: Text<'a>,
    /// blake3 (hex) of the tool's definition as the upstream sent it (description, schemas,
    /// annotations): what a pin compares.
    pub digest: Text<'a>,
}

/// A pinned tool definition changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PinChange<'a> {
    pub tool: Text<'a>,
    /// `added`, `changed`, `removed`, `shadowed`, `collision`, `accepted` (an operator accepted a changed definition).
    pub change: Text<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_digest: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_digest: Option<Text<'a>>,
}

/// Gateway lifecycle details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GatewayInfo<'a> {
    /// Sluice version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Text<'a>>,
    /// blake3 (hex) of the configuration in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Text<'a>>,
    /// Free text: why (reload result, session end reason, stop cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Text<'a>>,
}

/// The JSON Schema (draft 2020-12) of [`Event`], for outside consumers.
pub fn json_schema() -> serde_json::Value {
    let mut s = serde_json::to_value(schemars::schema_for!(OwnedEvent)).unwrap_or_default();
    if let Some(o) = s.as_object_mut() {
        o.insert("$id".into(), format!("https://sluice.dev/schemas/event.v{VERSION}.json").into());
        o.insert("title".into(), "Sluice session event".into());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_omitted_and_round_trip() {
        let mut e = Event::new("01J00000000000000000000000", 1_700_000_000_000_000, Kind::Request, "gw1");
        e.method = Some("tools/call".into());
        e.payload = Some(Payload::owned(r#"{"name":"echo","arguments":{"text":"[REDACTED:email]"}}"#.into()).unwrap());
        let s = serde_json::to_string(&e).unwrap();
        assert!(!s.contains("mcp_session") && !s.contains("findings") && !s.contains("payload_truncated"), "{s}");
        let back: OwnedEvent = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.key(), "gw1");
    }

    #[test]
    fn unknown_kind_and_fields_from_a_newer_writer_still_read() {
        let s = r#"{"v":9,"id":"X","ts":1,"kind":"quantum_event","instance":"i","brand_new":{"x":1}}"#;
        let e: OwnedEvent = serde_json::from_str(s).unwrap();
        assert_eq!(e.kind, Kind::Other);
        assert_eq!(e.v, 9);
    }
}
