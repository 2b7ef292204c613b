//! Event documents (JSON) → one Arrow batch of the archive schema, in a single pass: each
//! document is deserialised into borrowed fields (strings without escapes are not copied;
//! `payload` is kept as its raw JSON text) and appended to column builders.
//!
//! Fields this version does not know are skipped, so events from a newer writer still read;
//! a document that is not an event is an error naming its index in the chunk.

use anyhow::Result;
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Int64Builder, ListArray, ListBuilder, PrimitiveBuilder, RecordBatch, StringBuilder, StructArray, TimestampMicrosecondBuilder,
    UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, FieldRef, Fields, SchemaRef};
use crate::json::{self, Name, Reader};
use std::borrow::Cow;
use std::sync::Arc;

type Str<'a> = Cow<'a, str>;

/// One event document, parsed. Reused from document to document (its lists keep their
/// capacity): no allocation per event unless a string has escapes.
#[derive(Default)]
struct Ev<'a> {
    v: u16,
    id: Str<'a>,
    ts: i64,
    kind: Str<'a>,
    instance: Str<'a>,
    worker: Option<u32>,
    session: Option<Str<'a>>,
    mcp_session: Option<Str<'a>>,
    identity: Option<Identity<'a>>,
    route: Option<Str<'a>>,
    upstream: Option<Str<'a>>,
    direction: Option<Str<'a>>,
    method: Option<Str<'a>>,
    rpc_id: Option<Str<'a>>,
    tool: Option<Str<'a>>,
    /// Raw JSON text.
    payload: Option<&'a str>,
    payload_truncated: bool,
    bytes: Option<u64>,
    latency_us: Option<u64>,
    status: Option<u16>,
    error_code: Option<i64>,
    decision: Option<Decision<'a>>,
    approval: Option<Approval<'a>>,
    pin: Option<Pin<'a>>,
    gateway: Option<Gateway<'a>>,
    http_method: Option<Str<'a>>,
    http_path: Option<Str<'a>>,
    client_ip: Option<Str<'a>>,
    task: Option<Str<'a>>,
    call: Option<Str<'a>>,
    /// The lists, kept here rather than in their parents so that their buffers are reused;
    /// `None` where the list (or its parent) was absent or null.
    groups: Option<Vec<Str<'a>>>,
    findings: Option<Vec<Finding<'a>>>,
    approver_groups: Option<Vec<Str<'a>>>,
    tools: Option<Vec<Tool<'a>>>,
}

#[derive(Default)]
struct Identity<'a> {
    subject: Str<'a>,
    agent_type: Option<Str<'a>>,
    via: Option<Str<'a>>,
}

#[derive(Default)]
struct Decision<'a> {
    action: Str<'a>,
    stage: Str<'a>,
    rule: Option<Str<'a>>,
    reason: Option<Str<'a>>,
}

#[derive(Default)]
struct Finding<'a> {
    /// rule, kind, category, severity, path, action.
    required: [Str<'a>; 6],
    fingerprint: Option<Str<'a>>,
    encoding: Option<Str<'a>>,
}

#[derive(Default)]
struct Approval<'a> {
    id: Str<'a>,
    state: Str<'a>,
    args_digest: Str<'a>,
    by: Option<Str<'a>>,
    reason: Option<Str<'a>>,
    waited_ms: Option<u64>,
    expires_at: Option<i64>,
}

#[derive(Default)]
struct Tool<'a> {
    name: Str<'a>,
    digest: Str<'a>,
}

#[derive(Default)]
struct Pin<'a> {
    tool: Str<'a>,
    change: Str<'a>,
    old_digest: Option<Str<'a>>,
    new_digest: Option<Str<'a>>,
}

#[derive(Default)]
struct Gateway<'a> {
    version: Option<Str<'a>>,
    config_digest: Option<Str<'a>>,
    detail: Option<Str<'a>>,
}

/// How many of the members after the last one read are tried as raw bytes before a name is
/// read and looked up (writers leave out absent optional members).
const LOOKAHEAD: usize = 4;

/// Which members of one object were seen: a member named twice is an error, as is a
/// required one missing (both as `serde`'s derive had it).
struct Members {
    names: &'static [&'static str],
    /// Name → index faster than searching `names`, where there is one.
    index: Option<fn(&str) -> Option<usize>>,
    seen: u64,
    next: usize,
}

impl Members {
    fn new(names: &'static [&'static str]) -> Self {
        Members { names, index: None, seen: 0, next: 0 }
    }

    /// The members writers may emit next, for [`Reader::object_in_order`]: they emit members
    /// in schema order, leaving some out.
    fn expected(&self) -> &'static [&'static str] {
        let names = self.names;
        &names[self.next.min(names.len())..(self.next + LOOKAHEAD).min(names.len())]
    }

    /// The member's index among `names`, marked seen; `None` for a member this version does
    /// not know (to be skipped). A name other than the expected one is searched for from the
    /// expected one on.
    #[inline]
    fn mark(&mut self, r: &Reader<'_>, name: Name<'_>) -> json::Result<Option<usize>> {
        let n = self.names.len();
        let found = match name {
            Name::Expected(k) => Some(self.next + k),
            Name::Other(key) => match self.index {
                Some(index) => index(key),
                None => (0..n).map(|k| (self.next + k) % n).find(|&i| self.names[i] == key),
            },
        };
        let Some(i) = found else { return Ok(None) };
        self.next = i + 1;
        if self.seen & 1 << i != 0 {
            return r.err(format!("duplicate field `{}`", self.names[i]));
        }
        self.seen |= 1 << i;
        Ok(Some(i))
    }

    /// Read an object of these members: `each` gets each known member's index; unknown ones
    /// are skipped (still validated).
    fn read<'a>(&mut self, r: &mut Reader<'a>, mut each: impl FnMut(&mut Reader<'a>, usize) -> json::Result<()>) -> json::Result<()> {
        r.object_in_order(self.expected(), |r, name| {
            match self.mark(r, name)? {
                Some(i) => each(r, i)?,
                None => drop(r.skip()?),
            }
            Ok(self.expected())
        })
    }

    /// Fail unless the first `n` members were all seen.
    fn require(&self, r: &Reader<'_>, n: usize) -> json::Result<()> {
        match (0..n).find(|&i| self.seen & 1 << i == 0) {
            Some(i) => r.err(format!("missing field `{}`", self.names[i])),
            None => Ok(()),
        }
    }
}

fn opt_str<'a>(r: &mut Reader<'a>) -> json::Result<Option<Str<'a>>> {
    if r.null()? { Ok(None) } else { r.string().map(Some) }
}

fn opt_int<T: TryFrom<i128>>(r: &mut Reader<'_>) -> json::Result<Option<T>> {
    if r.null()? { Ok(None) } else { r.int().map(Some) }
}

/// A nullable list whose elements `item` reads, in the buffer taken from `spare` (cleared,
/// capacity kept): `Some(list)`, or `None` for `null` with the buffer left in `spare`.
fn opt_list<'a, T>(r: &mut Reader<'a>, spare: &mut Vec<T>, mut item: impl FnMut(&mut Reader<'a>) -> json::Result<T>) -> json::Result<Option<Vec<T>>> {
    if r.null()? {
        spare.clear();
        return Ok(None);
    }
    let mut buf = std::mem::take(spare);
    buf.clear();
    r.array(|r| {
        buf.push(item(r)?);
        Ok(())
    })?;
    Ok(Some(buf))
}

/// A nullable object whose members `each` reads, of which the first `required` (in `names`)
/// must be present; `None` for `null`.
fn opt_object<'a, T: Default>(
    r: &mut Reader<'a>,
    names: &'static [&'static str],
    required: usize,
    mut each: impl FnMut(&mut Reader<'a>, usize, &mut T) -> json::Result<()>,
) -> json::Result<Option<T>> {
    if r.null()? {
        return Ok(None);
    }
    let mut m = Members::new(names);
    let mut v = T::default();
    m.read(r, |r, i| each(r, i, &mut v))?;
    m.require(r, required)?;
    Ok(Some(v))
}

const EVENT: &[&str] = &[
    "v", "id", "ts", "kind", "instance", "worker", "session", "mcp_session", "identity", "route", "upstream", "direction", "method", "rpc_id", "tool", "payload",
    "payload_truncated", "bytes", "latency_us", "status", "error_code", "decision", "findings", "approval", "tools", "pin", "gateway",
    "http_method", "http_path", "client_ip", "task", "call",
];

/// [`EVENT`]'s index of a member name (a `match` compiles to a length switch and fixed-size
/// compares; the event has too many members to search).
fn event_member(key: &str) -> Option<usize> {
    Some(match key {
        "v" => 0,
        "id" => 1,
        "ts" => 2,
        "kind" => 3,
        "instance" => 4,
        "worker" => 5,
        "session" => 6,
        "mcp_session" => 7,
        "identity" => 8,
        "route" => 9,
        "upstream" => 10,
        "direction" => 11,
        "method" => 12,
        "rpc_id" => 13,
        "tool" => 14,
        "payload" => 15,
        "payload_truncated" => 16,
        "bytes" => 17,
        "latency_us" => 18,
        "status" => 19,
        "error_code" => 20,
        "decision" => 21,
        "findings" => 22,
        "approval" => 23,
        "tools" => 24,
        "pin" => 25,
        "gateway" => 26,
        "http_method" => 27,
        "http_path" => 28,
        "client_ip" => 29,
        "task" => 30,
        "call" => 31,
        _ => return None,
    })
}

/// The list buffers of one [`Ev`], carried from one document to the next.
#[derive(Default)]
struct Spare<'a> {
    groups: Vec<Str<'a>>,
    findings: Vec<Finding<'a>>,
    approver_groups: Vec<Str<'a>>,
    tools: Vec<Tool<'a>>,
}

fn recycle<T>(list: Option<Vec<T>>, spare: &mut Vec<T>) {
    if let Some(l) = list {
        *spare = l;
    }
}

/// Parse one event document into `e` (whose previous lists are recycled through `spare`).
fn event<'a>(doc: &'a str, e: &mut Ev<'a>, spare: &mut Spare<'a>) -> json::Result<()> {
    let old = std::mem::take(e);
    recycle(old.groups, &mut spare.groups);
    recycle(old.findings, &mut spare.findings);
    recycle(old.approver_groups, &mut spare.approver_groups);
    recycle(old.tools, &mut spare.tools);
    let mut r = Reader::new(doc);
    let mut m = Members { index: Some(event_member), ..Members::new(EVENT) };
    m.read(&mut r, |r, i| {
        match i {
            0 => e.v = r.int()?,
            1 => e.id = r.string()?,
            2 => e.ts = r.int()?,
            3 => e.kind = r.string()?,
            4 => e.instance = r.string()?,
            5 => e.worker = opt_int(r)?,
            6 => e.session = opt_str(r)?,
            7 => e.mcp_session = opt_str(r)?,
            8 => {
                let mut groups = None;
                e.identity = opt_object(r, &["subject", "groups", "agent_type", "via"], 1, |r, i, x: &mut Identity<'a>| {
                    match i {
                        0 => x.subject = r.string()?,
                        1 => groups = opt_list(r, &mut spare.groups, Reader::string)?,
                        2 => x.agent_type = opt_str(r)?,
                        _ => x.via = opt_str(r)?,
                    }
                    Ok(())
                })?;
                e.groups = groups;
            }
            9 => e.route = opt_str(r)?,
            10 => e.upstream = opt_str(r)?,
            11 => e.direction = opt_str(r)?,
            12 => e.method = opt_str(r)?,
            13 => e.rpc_id = opt_str(r)?,
            14 => e.tool = opt_str(r)?,
            15 => e.payload = if r.null()? { None } else { Some(r.skip()?) },
            16 => e.payload_truncated = r.bool()?,
            17 => e.bytes = opt_int(r)?,
            18 => e.latency_us = opt_int(r)?,
            19 => e.status = opt_int(r)?,
            20 => e.error_code = opt_int(r)?,
            21 => {
                e.decision = opt_object(r, &["action", "stage", "rule", "reason"], 2, |r, i, d: &mut Decision<'a>| {
                    match i {
                        0 => d.action = r.string()?,
                        1 => d.stage = r.string()?,
                        2 => d.rule = opt_str(r)?,
                        _ => d.reason = opt_str(r)?,
                    }
                    Ok(())
                })?;
            }
            22 => {
                e.findings = opt_list(r, &mut spare.findings, |r| {
                    let f = opt_object(r, &["rule", "kind", "category", "severity", "path", "action", "fingerprint", "encoding"], 6, |r, i, f: &mut Finding<'a>| {
                        match i {
                            0..6 => f.required[i] = r.string()?,
                            6 => f.fingerprint = opt_str(r)?,
                            _ => f.encoding = opt_str(r)?,
                        }
                        Ok(())
                    })?;
                    f.map_or_else(|| r.err("a finding is null"), Ok)
                })?;
            }
            23 => {
                let mut groups = None;
                e.approval = opt_object(r, &["id", "state", "args_digest", "approver_groups", "by", "reason", "waited_ms", "expires_at"], 3, |r, i, a: &mut Approval<'a>| {
                    match i {
                        0 => a.id = r.string()?,
                        1 => a.state = r.string()?,
                        2 => a.args_digest = r.string()?,
                        3 => groups = opt_list(r, &mut spare.approver_groups, Reader::string)?,
                        4 => a.by = opt_str(r)?,
                        5 => a.reason = opt_str(r)?,
                        6 => a.waited_ms = opt_int(r)?,
                        _ => a.expires_at = opt_int(r)?,
                    }
                    Ok(())
                })?;
                e.approver_groups = groups;
            }
            24 => {
                e.tools = opt_list(r, &mut spare.tools, |r| {
                    let t = opt_object(r, &["name", "digest"], 2, |r, i, t: &mut Tool<'a>| {
                        if i == 0 {
                            t.name = r.string()?;
                        } else {
                            t.digest = r.string()?;
                        }
                        Ok(())
                    })?;
                    t.map_or_else(|| r.err("a tool entry is null"), Ok)
                })?;
            }
            25 => {
                e.pin = opt_object(r, &["tool", "change", "old_digest", "new_digest"], 2, |r, i, p: &mut Pin<'a>| {
                    match i {
                        0 => p.tool = r.string()?,
                        1 => p.change = r.string()?,
                        2 => p.old_digest = opt_str(r)?,
                        _ => p.new_digest = opt_str(r)?,
                    }
                    Ok(())
                })?;
            }
            26 => {
                e.gateway = opt_object(r, &["version", "config_digest", "detail"], 0, |r, i, g: &mut Gateway<'a>| {
                    match i {
                        0 => g.version = opt_str(r)?,
                        1 => g.config_digest = opt_str(r)?,
                        _ => g.detail = opt_str(r)?,
                    }
                    Ok(())
                })?;
            }
            27 => e.http_method = opt_str(r)?,
            28 => e.http_path = opt_str(r)?,
            29 => e.client_ip = opt_str(r)?,
            30 => e.task = opt_str(r)?,
            _ => e.call = opt_str(r)?,
        }
        Ok(())
    })?;
    m.require(&r, 5)?;
    r.end()
}

/// A struct column built child by child, with its own validity.
struct Strukt {
    fields: Fields,
    valid: Vec<bool>,
}

impl Strukt {
    fn of(schema: &SchemaRef, name: &str) -> Result<Strukt> {
        Strukt::of_type(schema.field_with_name(name)?.data_type(), name)
    }

    fn of_type(t: &DataType, name: &str) -> Result<Strukt> {
        match t {
            DataType::Struct(f) => Ok(Strukt { fields: f.clone(), valid: Vec::new() }),
            t => anyhow::bail!("{name} is {t}, not a struct"),
        }
    }

    fn finish(self, children: Vec<ArrayRef>) -> Result<ArrayRef> {
        Ok(Arc::new(StructArray::try_new(self.fields, children, Some(NullBuffer::from(self.valid)))?))
    }
}

fn list_item(schema: &SchemaRef, name: &str) -> Result<FieldRef> {
    match schema.field_with_name(name)?.data_type() {
        DataType::List(f) => Ok(f.clone()),
        t => anyhow::bail!("column {name} is {t}, not a list"),
    }
}

/// A column builder that appends its nulls in runs, when the next value (or the end) comes:
/// most optional members are absent from most events, and a run of nulls costs one call where
/// a null at a time cost one each.
struct Runs<B> {
    b: B,
    nulls: usize,
}

/// Builders that append `n` nulls at once.
trait Nulls {
    fn nulls(&mut self, n: usize);
}

impl Nulls for StringBuilder {
    fn nulls(&mut self, n: usize) {
        self.append_nulls(n);
    }
}

impl<T: ArrowPrimitiveType> Nulls for PrimitiveBuilder<T> {
    fn nulls(&mut self, n: usize) {
        self.append_nulls(n);
    }
}

impl Nulls for ListBuilder<StringBuilder> {
    fn nulls(&mut self, n: usize) {
        self.append_nulls(n);
    }
}

impl<B: Nulls + ArrayBuilder> Runs<B> {
    fn new(b: B) -> Self {
        Runs { b, nulls: 0 }
    }

    #[inline]
    fn null(&mut self) {
        self.nulls += 1;
    }

    /// The builder, with the nulls before the value about to be appended.
    #[inline]
    fn get(&mut self) -> &mut B {
        if self.nulls != 0 {
            self.b.nulls(std::mem::take(&mut self.nulls));
        }
        &mut self.b
    }

    fn finish(mut self) -> ArrayRef {
        ArrayBuilder::finish(self.get())
    }
}

impl Runs<StringBuilder> {
    #[inline]
    fn value(&mut self, v: &str) {
        self.get().append_value(v);
    }

    #[inline]
    fn option(&mut self, v: &Option<Str<'_>>) {
        match v {
            Some(v) => self.value(v),
            None => self.null(),
        }
    }
}

impl Runs<ListBuilder<StringBuilder>> {
    fn option(&mut self, v: &Option<Vec<Str<'_>>>) {
        match v {
            Some(items) => {
                let b = self.get();
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            None => self.null(),
        }
    }
}

impl<T: ArrowPrimitiveType> Runs<PrimitiveBuilder<T>> {
    #[inline]
    fn option(&mut self, v: Option<T::Native>) {
        match v {
            Some(v) => self.get().append_value(v),
            None => self.null(),
        }
    }
}

fn strings(n: usize) -> Runs<StringBuilder> {
    Runs::new(StringBuilder::with_capacity(n, n * 16))
}

/// A document of the chunk that is not a session event (not JSON, not an object, a required
/// member missing or of the wrong type, …) — the document's fault, unlike every other error of
/// [`decode`], which is the decoder's own (an Arrow schema it does not build, say) and must stop
/// the ingest instead of setting good documents aside. Found with `downcast_ref`.
#[derive(Debug)]
pub struct NotAnEvent {
    pub index: usize,
    pub reason: anyhow::Error,
}

impl std::fmt::Display for NotAnEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event {} of the chunk is not a session event: {:#}", self.index, self.reason)
    }
}

impl std::error::Error for NotAnEvent {}

/// Decode event documents into one batch of `schema` (the archive's event schema). A document
/// that is not a session event fails it with [`NotAnEvent`].
pub fn decode<D: AsRef<[u8]>>(schema: &SchemaRef, docs: &[D]) -> Result<RecordBatch> {
    let n = docs.len();
    let mut v = UInt16Builder::with_capacity(n);
    let mut id = StringBuilder::with_capacity(n, n * 26);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut kind, mut instance, mut session, mut mcp_session) = (strings(n), strings(n), strings(n), strings(n));
    let mut worker = Runs::new(UInt32Builder::with_capacity(n));
    let mut identity = Strukt::of(schema, "identity")?;
    let (mut subject, mut groups, mut agent_type, mut via) = (strings(n), Runs::new(ListBuilder::new(StringBuilder::new())), strings(n), strings(n));
    let (mut route, mut upstream, mut direction, mut method, mut rpc_id, mut tool) = (strings(n), strings(n), strings(n), strings(n), strings(n), strings(n));
    // Payloads are part of their documents: their total size bounds the payload column's (no
    // regrowth copies).
    let mut payload = Runs::new(StringBuilder::with_capacity(n, docs.iter().map(|d| d.as_ref().len()).sum()));
    let mut truncated = BooleanBuilder::with_capacity(n);
    let (mut bytes, mut latency) = (Runs::new(UInt64Builder::with_capacity(n)), Runs::new(UInt64Builder::with_capacity(n)));
    let mut status = Runs::new(UInt16Builder::with_capacity(n));
    let mut error_code = Runs::new(Int64Builder::with_capacity(n));
    let mut decision = Strukt::of(schema, "decision")?;
    let (mut d_action, mut d_stage, mut d_rule, mut d_reason) = (strings(n), strings(n), strings(n), strings(n));
    let finding_item = list_item(schema, "findings")?;
    let mut finding = Strukt::of_type(finding_item.data_type(), "findings items")?;
    let mut f_cols: [StringBuilder; 8] = std::array::from_fn(|_| StringBuilder::new());
    let mut f_offsets = vec![0i32];
    let mut f_valid = Vec::with_capacity(n);
    let mut approval = Strukt::of(schema, "approval")?;
    let (mut a_id, mut a_state, mut a_digest, mut a_groups, mut a_by, mut a_reason) = (strings(0), strings(0), strings(0), Runs::new(ListBuilder::new(StringBuilder::new())), strings(0), strings(0));
    let mut a_waited = Runs::new(UInt64Builder::new());
    let mut a_expires = Runs::new(TimestampMicrosecondBuilder::new().with_timezone("UTC"));
    let tool_item = list_item(schema, "tools")?;
    let mut tool_entry = Strukt::of_type(tool_item.data_type(), "tools items")?;
    let (mut t_name, mut t_digest) = (StringBuilder::new(), StringBuilder::new());
    let mut t_offsets = vec![0i32];
    let mut t_valid = Vec::with_capacity(n);
    let mut pin = Strukt::of(schema, "pin")?;
    let (mut p_tool, mut p_change, mut p_old, mut p_new) = (strings(0), strings(0), strings(0), strings(0));
    let mut gateway = Strukt::of(schema, "gateway")?;
    let (mut g_version, mut g_digest, mut g_detail) = (strings(0), strings(0), strings(0));
    let (mut http_method, mut http_path, mut client_ip, mut task, mut call) = (strings(0), strings(0), strings(0), strings(0), strings(0));

    let (mut e, mut spare) = (Ev::default(), Spare::default());
    for (i, doc) in docs.iter().enumerate() {
        // UTF-8 checked once for the whole document (with SIMD; `std` says where it fails);
        // the reader then works on a `str`.
        simdutf8::basic::from_utf8(doc.as_ref())
            .or_else(|_| std::str::from_utf8(doc.as_ref()))
            .map_err(anyhow::Error::from)
            .and_then(|t| event(t, &mut e, &mut spare).map_err(anyhow::Error::from))
            .map_err(|reason| NotAnEvent { index: i, reason })?;
        v.append_value(e.v);
        id.append_value(&e.id);
        ts.append_value(e.ts);
        kind.value(&e.kind);
        instance.value(&e.instance);
        worker.option(e.worker);
        session.option(&e.session);
        mcp_session.option(&e.mcp_session);
        match &e.identity {
            Some(x) => {
                identity.valid.push(true);
                subject.value(&x.subject);
                groups.option(&e.groups);
                agent_type.option(&x.agent_type);
                via.option(&x.via);
            }
            None => {
                identity.valid.push(false);
                subject.null();
                groups.null();
                agent_type.null();
                via.null();
            }
        }
        for (b, x) in [(&mut route, &e.route), (&mut upstream, &e.upstream), (&mut direction, &e.direction), (&mut method, &e.method), (&mut rpc_id, &e.rpc_id), (&mut tool, &e.tool)] {
            b.option(x);
        }
        match e.payload {
            Some(p) => payload.value(p),
            None => payload.null(),
        }
        truncated.append_value(e.payload_truncated);
        bytes.option(e.bytes);
        latency.option(e.latency_us);
        status.option(e.status);
        error_code.option(e.error_code);
        match &e.decision {
            Some(d) => {
                decision.valid.push(true);
                d_action.value(&d.action);
                d_stage.value(&d.stage);
                d_rule.option(&d.rule);
                d_reason.option(&d.reason);
            }
            None => {
                decision.valid.push(false);
                for b in [&mut d_action, &mut d_stage, &mut d_rule, &mut d_reason] {
                    b.null();
                }
            }
        }
        let fs = e.findings.as_deref().unwrap_or_default();
        for f in fs {
            finding.valid.push(true);
            for (b, x) in f_cols.iter_mut().zip(&f.required) {
                b.append_value(x);
            }
            f_cols[6].append_option(f.fingerprint.as_deref());
            f_cols[7].append_option(f.encoding.as_deref());
        }
        f_offsets.push(f_offsets[f_offsets.len() - 1] + fs.len() as i32);
        f_valid.push(e.findings.is_some());
        match &e.approval {
            Some(a) => {
                approval.valid.push(true);
                a_id.value(&a.id);
                a_state.value(&a.state);
                a_digest.value(&a.args_digest);
                a_groups.option(&e.approver_groups);
                a_by.option(&a.by);
                a_reason.option(&a.reason);
                a_waited.option(a.waited_ms);
                a_expires.option(a.expires_at);
            }
            None => {
                approval.valid.push(false);
                for b in [&mut a_id, &mut a_state, &mut a_digest, &mut a_by, &mut a_reason] {
                    b.null();
                }
                a_groups.null();
                a_waited.null();
                a_expires.null();
            }
        }
        let entries = e.tools.as_deref().unwrap_or_default();
        for t in entries {
            tool_entry.valid.push(true);
            t_name.append_value(&t.name);
            t_digest.append_value(&t.digest);
        }
        t_offsets.push(t_offsets[t_offsets.len() - 1] + entries.len() as i32);
        t_valid.push(e.tools.is_some());
        match &e.pin {
            Some(p) => {
                pin.valid.push(true);
                p_tool.value(&p.tool);
                p_change.value(&p.change);
                p_old.option(&p.old_digest);
                p_new.option(&p.new_digest);
            }
            None => {
                pin.valid.push(false);
                for b in [&mut p_tool, &mut p_change, &mut p_old, &mut p_new] {
                    b.null();
                }
            }
        }
        match &e.gateway {
            Some(g) => {
                gateway.valid.push(true);
                g_version.option(&g.version);
                g_digest.option(&g.config_digest);
                g_detail.option(&g.detail);
            }
            None => {
                gateway.valid.push(false);
                for b in [&mut g_version, &mut g_digest, &mut g_detail] {
                    b.null();
                }
            }
        }
        for (b, x) in [(&mut http_method, &e.http_method), (&mut http_path, &e.http_path), (&mut client_ip, &e.client_ip), (&mut task, &e.task), (&mut call, &e.call)] {
            b.option(x);
        }
    }

    let identity = identity.finish(vec![subject.finish(), groups.finish(), agent_type.finish(), via.finish()])?;
    let decision = decision.finish(vec![d_action.finish(), d_stage.finish(), d_rule.finish(), d_reason.finish()])?;
    let f_children: Vec<ArrayRef> = f_cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    let findings: ArrayRef =
        Arc::new(ListArray::try_new(finding_item, OffsetBuffer::new(f_offsets.into()), finding.finish(f_children)?, Some(NullBuffer::from(f_valid)))?);
    let approval = approval.finish(vec![
        a_id.finish(),
        a_state.finish(),
        a_digest.finish(),
        a_groups.finish(),
        a_by.finish(),
        a_reason.finish(),
        a_waited.finish(),
        a_expires.finish(),
    ])?;
    let tools: ArrayRef = Arc::new(ListArray::try_new(
        tool_item,
        OffsetBuffer::new(t_offsets.into()),
        tool_entry.finish(vec![Arc::new(t_name.finish()), Arc::new(t_digest.finish())])?,
        Some(NullBuffer::from(t_valid)),
    )?);
    let pin = pin.finish(vec![p_tool.finish(), p_change.finish(), p_old.finish(), p_new.finish()])?;
    let gateway = gateway.finish(vec![g_version.finish(), g_digest.finish(), g_detail.finish()])?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(v.finish()),
        Arc::new(id.finish()),
        Arc::new(ts.finish()),
        kind.finish(),
        instance.finish(),
        worker.finish(),
        session.finish(),
        mcp_session.finish(),
        identity,
        route.finish(),
        upstream.finish(),
        direction.finish(),
        method.finish(),
        rpc_id.finish(),
        tool.finish(),
        payload.finish(),
        Arc::new(truncated.finish()),
        bytes.finish(),
        latency.finish(),
        status.finish(),
        error_code.finish(),
        decision,
        findings,
        approval,
        tools,
        pin,
        gateway,
        http_method.finish(),
        http_path.finish(),
        client_ip.finish(),
        task.finish(),
        call.finish(),
    ];
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, BooleanArray};
    use datafusion::arrow::datatypes::Schema;
    use serde::Deserialize;
    use serde_json::value::RawValue;

    /// The reference: arrow-json for every column but `payload` (which it cannot keep as
    /// text), `payload` from a serde pass, `payload_truncated` defaulted to false.
    fn reference(schema: &SchemaRef, docs: &[Vec<u8>]) -> RecordBatch {
        let payload_at = schema.index_of("payload").unwrap();
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != "payload")
            .map(|f| if f.name() == "payload_truncated" { Arc::new(f.as_ref().clone().with_nullable(true)) } else { f.clone() })
            .collect();
        let without = Arc::new(Schema::new(fields));
        let mut d = arrow_json::ReaderBuilder::new(without.clone()).with_batch_size(docs.len()).build_decoder().unwrap();
        #[derive(Deserialize)]
        struct P<'a> {
            #[serde(borrow, default)]
            payload: Option<&'a RawValue>,
        }
        let mut payloads = Vec::new();
        for v in docs {
            payloads.push(serde_json::from_slice::<P<'_>>(v).unwrap().payload.map(RawValue::get));
            d.decode(v).unwrap();
            d.decode(b"\n").unwrap();
        }
        let b = d.flush().unwrap().unwrap();
        let mut cols = b.columns().to_vec();
        let i = without.index_of("payload_truncated").unwrap();
        cols[i] = Arc::new(cols[i].as_boolean().iter().map(|b| Some(b.unwrap_or(false))).collect::<BooleanArray>());
        cols.insert(payload_at, Arc::new(datafusion::arrow::array::StringArray::from(payloads)));
        RecordBatch::try_new(schema.clone(), cols).unwrap()
    }

    /// The single-pass decoder and the reference agree on the frozen v1 events (every kind,
    /// every nested field) and on events with escapes, empty lists and unknown fields.
    #[test]
    fn agrees_with_arrow_json() {
        let schema: SchemaRef = Arc::new(sluice_schema::arrow::schema());
        let mut docs = fixtures();
        assert!(docs.len() > 10);
        docs.push(br#"{"v":1,"id":"01X","ts":5,"kind":"request","instance":"g\u00e9","tool":"a\"b","payload":{"x":"\u0041"},"identity":{"subject":"s","groups":[]},"findings":[],"future_field":{"a":[1,2]}}"#.to_vec());
        docs.push(br#"{"v":2,"id":"01Y","ts":6,"kind":"some_new_kind","instance":"g","payload_truncated":true,"approval":{"id":"a","state":"pending","args_digest":"d","expires_at":7}}"#.to_vec());
        let ours = decode(&schema, &docs).unwrap();
        let theirs = reference(&schema, &docs);
        for (i, f) in schema.fields().iter().enumerate() {
            assert_eq!(ours.column(i).as_ref(), theirs.column(i).as_ref(), "column {}", f.name());
        }
        assert_eq!(ours.column_by_name("tool").unwrap().as_string::<i32>().value(docs.len() - 2), "a\"b");
    }

    fn fixtures() -> Vec<Vec<u8>> {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/fixtures/v1.jsonl")).unwrap();
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.as_bytes().to_vec()).collect()
    }

    /// Events mutated at random (bytes replaced, inserted, deleted, documents cut short) are
    /// either refused or decoded exactly as the reference decodes them; nothing a JSON parser
    /// refuses is ever accepted.
    #[test]
    fn mutated_events_are_refused_or_decoded_exactly() {
        let schema: SchemaRef = Arc::new(sluice_schema::arrow::schema());
        let docs = fixtures();
        let alphabet = b"{}[]\",:\\u0123456789abcdefABCDEF-+.eEtrnslx \t\n\x01\x7f";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            let mut d = docs[round % docs.len()].clone();
            for _ in 0..1 + rand() % 2 {
                let at = rand() % (d.len() + 1);
                let c = alphabet[rand() % alphabet.len()];
                match rand() % 8 {
                    0..3 if at < d.len() => d[at] = c,
                    3..6 => d.insert(at, c),
                    6 if at < d.len() => drop(d.remove(at)),
                    _ => d.truncate(at),
                }
            }
            match decode(&schema, &[&d]) {
                Ok(ours) => {
                    let text = String::from_utf8_lossy(&d);
                    assert!(serde_json::from_slice::<Box<RawValue>>(&d).is_ok(), "accepted malformed JSON: {text}");
                    let theirs = reference(&schema, std::slice::from_ref(&d));
                    for (i, f) in schema.fields().iter().enumerate() {
                        assert_eq!(ours.column(i).as_ref(), theirs.column(i).as_ref(), "column {} of {text}", f.name());
                    }
                    accepted += 1;
                }
                Err(_) => refused += 1,
            }
        }
        assert!(accepted > 2_000 && refused > 2_000, "accepted {accepted}, refused {refused}");
    }

    /// What serde's derive refused stays refused, with a reason: duplicate and missing
    /// members, wrong types, out-of-range integers, lone surrogates, trailing text.
    #[test]
    fn events_that_break_the_rules_are_refused_with_a_reason() {
        let schema: SchemaRef = Arc::new(sluice_schema::arrow::schema());
        let head = r#"{"v":1,"id":"a","ts":1,"kind":"request","instance":"g""#;
        for (bad, why) in [
            (format!(r#"{head},"id":"b"}}"#), "duplicate field `id`"),
            // A duplicate read as an expected name (`ts` right after `id`), one looked up, and
            // one spelt with an escape.
            (r#"{"v":1,"ts":1,"id":"a","ts":2,"kind":"request","instance":"g"}"#.to_string(), "duplicate field `ts`"),
            (format!(r#"{head},"worker":1,"worker":2}}"#), "duplicate field `worker`"),
            (format!(r#"{head},"\u0069d":"b"}}"#), "duplicate field `id`"),
            (r#"{"v":1,"id":"a","ts":1,"instance":"g"}"#.to_string(), "missing field `kind`"),
            (format!(r#"{head},"identity":{{"groups":[]}}}}"#), "missing field `subject`"),
            (format!(r#"{head},"decision":{{"action":"deny"}}}}"#), "missing field `stage`"),
            (format!(r#"{head},"findings":[null]}}"#), "a finding is null"),
            (format!(r#"{head},"status":70000}}"#), "out of range"),
            (format!(r#"{head},"bytes":-1}}"#), "out of range"),
            (format!(r#"{head},"latency_us":1.5}}"#), "not an integer"),
            (format!(r#"{head},"tool":7}}"#), "expected a string"),
            (format!(r#"{head},"payload_truncated":null}}"#), "expected true or false"),
            (format!(r#"{head}}} {{}}"#), "trailing characters"),
            (format!(r#"{head},"tool":"\ud800"}}"#), "lone leading surrogate"),
        ] {
            let e = decode(&schema, &[bad.as_bytes()]).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{bad}: {e:#}");
        }
        let fine = format!(r#" {head} , "unknown" : {{"deep":[1,{{"x":null}}]}}, "tool" : null , "worker":4294967295 }} "#);
        let b = decode(&schema, &[fine.as_bytes()]).unwrap();
        assert!(b.column_by_name("tool").unwrap().is_null(0));
        assert_eq!(b.column_by_name("worker").unwrap().as_primitive::<datafusion::arrow::datatypes::UInt32Type>().value(0), u32::MAX);
        // Names that only start like the expected ones are other members (`workers`, `sessio`
        // unknown and skipped); an escaped name is the member it spells; members out of order.
        let odd = r#"{"v":1,"id":"a","ts":1,"kind":"request","instance":"g","workers":9,"sessio":"x","s\u0065ssion":"s","worker":3,"tool":"t","route":"r"}"#;
        let b = decode(&schema, &[odd.as_bytes()]).unwrap();
        assert_eq!(b.column_by_name("worker").unwrap().as_primitive::<datafusion::arrow::datatypes::UInt32Type>().value(0), 3);
        for (col, want) in [("session", "s"), ("tool", "t"), ("route", "r")] {
            let c = b.column_by_name(col).unwrap();
            let got = datafusion::arrow::util::display::array_value_to_string(c, 0).unwrap();
            assert_eq!(got, want, "{col}");
        }
    }

    #[test]
    fn event_member_indexes_follow_the_names() {
        for (i, n) in EVENT.iter().enumerate() {
            assert_eq!(event_member(n), Some(i), "{n}");
        }
        assert_eq!(event_member("Kind"), None);
        let schema = sluice_schema::arrow::schema();
        let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(cols, EVENT);
    }

    #[test]
    fn a_document_that_is_not_an_event_is_named() {
        let schema: SchemaRef = Arc::new(sluice_schema::arrow::schema());
        let docs = [br#"{"v":1,"id":"a","ts":1,"kind":"request","instance":"g"}"#.to_vec(), b"{\"v\":1,\"id\":7}".to_vec()];
        let e = decode(&schema, &docs).unwrap_err();
        assert!(format!("{e:#}").contains("event 1 of the chunk"), "{e:#}");
    }

    /// `payload` is kept as raw text but still checked: malformed JSON anywhere in it (or in
    /// a field this version skips) is an error, never archived text no engine can read.
    #[test]
    fn malformed_json_inside_payload_or_skipped_fields_is_an_error() {
        let schema: SchemaRef = Arc::new(sluice_schema::arrow::schema());
        let head = r#"{"v":1,"id":"a","ts":1,"kind":"request","instance":"g","#;
        for bad in [
            r#""payload":{"a":tru}}"#,
            r#""payload":{"a":[1,2}}"#,
            r#""payload":{"a":"\x"}}"#,
            r#""payload":{"a":1,}}"#,
            r#""payload":{"a":01}}"#,
            r#""payload":{"a" 1}}"#,
            r#""future":[{"a":nul}]}"#,
            r#""payload":{"a":"x"}"#,
        ] {
            let doc = format!("{head}{bad}");
            assert!(decode(&schema, &[doc.as_bytes()]).is_err(), "accepted {doc}");
        }
        let good = format!(r#"{head}"payload":{{"a":[true,null,-1.5e3,"\u00e9\n"]}}}}"#);
        let b = decode(&schema, &[good.as_bytes()]).unwrap();
        assert_eq!(b.column_by_name("payload").unwrap().as_string::<i32>().value(0), r#"{"a":[true,null,-1.5e3,"\u00e9\n"]}"#);
    }
}
