//! Event documents (JSON) → one Arrow batch of the archive schema, in a single pass: each
//! document is deserialised into borrowed fields (strings without escapes are not copied;
//! `payload` is kept as its raw JSON text) and appended to column builders.
//!
//! Fields this version does not know are skipped, so events from a newer writer still read;
//! a document that is not an event is an error naming its index in the chunk.

use anyhow::{Context as _, Result};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, ListArray, ListBuilder, RecordBatch, StringBuilder, StructArray, TimestampMicrosecondBuilder, UInt16Builder, UInt32Builder,
    UInt64Builder,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, FieldRef, Fields, SchemaRef};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// A JSON string, borrowed from the document when it has no escapes. (serde borrows a bare
/// `Cow<str>` field, but inside `Option` or `Vec` its `Cow` is always an owned copy: one
/// allocation per string, which was a tenth of ingest time.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Text)
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[derive(Deserialize)]
struct Ev<'a> {
    v: u16,
    #[serde(borrow)]
    id: Text<'a>,
    ts: i64,
    #[serde(borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    instance: Text<'a>,
    #[serde(default)]
    worker: Option<u32>,
    #[serde(borrow, default)]
    session: Option<Text<'a>>,
    #[serde(borrow, default)]
    mcp_session: Option<Text<'a>>,
    #[serde(borrow, default)]
    identity: Option<Identity<'a>>,
    #[serde(borrow, default)]
    route: Option<Text<'a>>,
    #[serde(borrow, default)]
    upstream: Option<Text<'a>>,
    #[serde(borrow, default)]
    direction: Option<Text<'a>>,
    #[serde(borrow, default)]
    method: Option<Text<'a>>,
    #[serde(borrow, default)]
    rpc_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool: Option<Text<'a>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_truncated: bool,
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    latency_us: Option<u64>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(borrow, default)]
    decision: Option<Decision<'a>>,
    #[serde(borrow, default)]
    findings: Option<Vec<Finding<'a>>>,
    #[serde(borrow, default)]
    approval: Option<Approval<'a>>,
    #[serde(borrow, default)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow, default)]
    pin: Option<Pin<'a>>,
    #[serde(borrow, default)]
    gateway: Option<Gateway<'a>>,
}

#[derive(Deserialize)]
struct Identity<'a> {
    #[serde(borrow)]
    subject: Text<'a>,
    #[serde(borrow, default)]
    groups: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    agent_type: Option<Text<'a>>,
    #[serde(borrow, default)]
    via: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Decision<'a> {
    #[serde(borrow)]
    action: Text<'a>,
    #[serde(borrow)]
    stage: Text<'a>,
    #[serde(borrow, default)]
    rule: Option<Text<'a>>,
    #[serde(borrow, default)]
    reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Finding<'a> {
    #[serde(borrow)]
    rule: Text<'a>,
    #[serde(borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    category: Text<'a>,
    #[serde(borrow)]
    severity: Text<'a>,
    #[serde(borrow)]
    path: Text<'a>,
    #[serde(borrow)]
    action: Text<'a>,
    #[serde(borrow, default)]
    fingerprint: Option<Text<'a>>,
    #[serde(borrow, default)]
    encoding: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Approval<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    state: Text<'a>,
    #[serde(borrow)]
    args_digest: Text<'a>,
    #[serde(borrow, default)]
    approver_groups: Option<Vec<Text<'a>>>,
    #[serde(borrow, default)]
    by: Option<Text<'a>>,
    #[serde(borrow, default)]
    reason: Option<Text<'a>>,
    #[serde(default)]
    waited_ms: Option<u64>,
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    digest: Text<'a>,
}

#[derive(Deserialize)]
struct Pin<'a> {
    #[serde(borrow)]
    tool: Text<'a>,
    #[serde(borrow)]
    change: Text<'a>,
    #[serde(borrow, default)]
    old_digest: Option<Text<'a>>,
    #[serde(borrow, default)]
    new_digest: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Gateway<'a> {
    #[serde(borrow, default)]
    version: Option<Text<'a>>,
    #[serde(borrow, default)]
    config_digest: Option<Text<'a>>,
    #[serde(borrow, default)]
    detail: Option<Text<'a>>,
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

fn text(b: &mut StringBuilder, v: &Option<Text<'_>>) {
    b.append_option(v.as_deref());
}

fn strings(n: usize) -> StringBuilder {
    StringBuilder::with_capacity(n, n * 16)
}

/// Decode event documents into one batch of `schema` (the archive's event schema).
pub fn decode<D: AsRef<[u8]>>(schema: &SchemaRef, docs: &[D]) -> Result<RecordBatch> {
    let n = docs.len();
    let mut v = UInt16Builder::with_capacity(n);
    let mut id = StringBuilder::with_capacity(n, n * 26);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut kind, mut instance, mut session, mut mcp_session) = (strings(n), strings(n), strings(n), strings(n));
    let mut worker = UInt32Builder::with_capacity(n);
    let mut identity = Strukt::of(schema, "identity")?;
    let (mut subject, mut groups, mut agent_type, mut via) = (strings(n), ListBuilder::new(StringBuilder::new()), strings(n), strings(n));
    let (mut route, mut upstream, mut direction, mut method, mut rpc_id, mut tool) = (strings(n), strings(n), strings(n), strings(n), strings(n), strings(n));
    let mut payload = StringBuilder::with_capacity(n, n * 256);
    let mut truncated = BooleanBuilder::with_capacity(n);
    let (mut bytes, mut latency) = (UInt64Builder::with_capacity(n), UInt64Builder::with_capacity(n));
    let mut status = UInt16Builder::with_capacity(n);
    let mut error_code = Int64Builder::with_capacity(n);
    let mut decision = Strukt::of(schema, "decision")?;
    let (mut d_action, mut d_stage, mut d_rule, mut d_reason) = (strings(n), strings(n), strings(n), strings(n));
    let finding_item = list_item(schema, "findings")?;
    let mut finding = Strukt::of_type(finding_item.data_type(), "findings items")?;
    let mut f_cols: [StringBuilder; 8] = std::array::from_fn(|_| StringBuilder::new());
    let mut f_offsets = vec![0i32];
    let mut f_valid = Vec::with_capacity(n);
    let mut approval = Strukt::of(schema, "approval")?;
    let (mut a_id, mut a_state, mut a_digest, mut a_groups, mut a_by, mut a_reason) = (strings(0), strings(0), strings(0), ListBuilder::new(StringBuilder::new()), strings(0), strings(0));
    let mut a_waited = UInt64Builder::new();
    let mut a_expires = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let tool_item = list_item(schema, "tools")?;
    let mut tool_entry = Strukt::of_type(tool_item.data_type(), "tools items")?;
    let (mut t_name, mut t_digest) = (StringBuilder::new(), StringBuilder::new());
    let mut t_offsets = vec![0i32];
    let mut t_valid = Vec::with_capacity(n);
    let mut pin = Strukt::of(schema, "pin")?;
    let (mut p_tool, mut p_change, mut p_old, mut p_new) = (strings(0), strings(0), strings(0), strings(0));
    let mut gateway = Strukt::of(schema, "gateway")?;
    let (mut g_version, mut g_digest, mut g_detail) = (strings(0), strings(0), strings(0));

    for (i, doc) in docs.iter().enumerate() {
        // UTF-8 checked once for the whole document; parsing from a `str` then skips the
        // check per string.
        let e: Ev<'_> = std::str::from_utf8(doc.as_ref())
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str(t).map_err(anyhow::Error::from))
            .with_context(|| format!("event {i} of the chunk is not a session event"))?;
        v.append_value(e.v);
        id.append_value(&e.id);
        ts.append_value(e.ts);
        kind.append_value(&e.kind);
        instance.append_value(&e.instance);
        worker.append_option(e.worker);
        text(&mut session, &e.session);
        text(&mut mcp_session, &e.mcp_session);
        match &e.identity {
            Some(x) => {
                identity.valid.push(true);
                subject.append_value(&x.subject);
                for g in x.groups.iter().flatten() {
                    groups.values().append_value(g);
                }
                groups.append(x.groups.is_some());
                text(&mut agent_type, &x.agent_type);
                text(&mut via, &x.via);
            }
            None => {
                identity.valid.push(false);
                subject.append_value("");
                groups.append(false);
                agent_type.append_null();
                via.append_null();
            }
        }
        for (b, x) in [(&mut route, &e.route), (&mut upstream, &e.upstream), (&mut direction, &e.direction), (&mut method, &e.method), (&mut rpc_id, &e.rpc_id), (&mut tool, &e.tool)] {
            text(b, x);
        }
        payload.append_option(e.payload.map(RawValue::get));
        truncated.append_value(e.payload_truncated);
        bytes.append_option(e.bytes);
        latency.append_option(e.latency_us);
        status.append_option(e.status);
        error_code.append_option(e.error_code);
        match &e.decision {
            Some(d) => {
                decision.valid.push(true);
                d_action.append_value(&d.action);
                d_stage.append_value(&d.stage);
                text(&mut d_rule, &d.rule);
                text(&mut d_reason, &d.reason);
            }
            None => {
                decision.valid.push(false);
                d_action.append_value("");
                d_stage.append_value("");
                d_rule.append_null();
                d_reason.append_null();
            }
        }
        let fs = e.findings.as_deref().unwrap_or_default();
        for f in fs {
            finding.valid.push(true);
            for (b, x) in f_cols.iter_mut().zip([&f.rule, &f.kind, &f.category, &f.severity, &f.path, &f.action]) {
                b.append_value(x);
            }
            text(&mut f_cols[6], &f.fingerprint);
            text(&mut f_cols[7], &f.encoding);
        }
        f_offsets.push(f_offsets[f_offsets.len() - 1] + fs.len() as i32);
        f_valid.push(e.findings.is_some());
        match &e.approval {
            Some(a) => {
                approval.valid.push(true);
                a_id.append_value(&a.id);
                a_state.append_value(&a.state);
                a_digest.append_value(&a.args_digest);
                for g in a.approver_groups.iter().flatten() {
                    a_groups.values().append_value(g);
                }
                a_groups.append(a.approver_groups.is_some());
                text(&mut a_by, &a.by);
                text(&mut a_reason, &a.reason);
                a_waited.append_option(a.waited_ms);
                a_expires.append_option(a.expires_at);
            }
            None => {
                approval.valid.push(false);
                for b in [&mut a_id, &mut a_state, &mut a_digest] {
                    b.append_value("");
                }
                a_groups.append(false);
                a_by.append_null();
                a_reason.append_null();
                a_waited.append_null();
                a_expires.append_null();
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
                p_tool.append_value(&p.tool);
                p_change.append_value(&p.change);
                text(&mut p_old, &p.old_digest);
                text(&mut p_new, &p.new_digest);
            }
            None => {
                pin.valid.push(false);
                p_tool.append_value("");
                p_change.append_value("");
                p_old.append_null();
                p_new.append_null();
            }
        }
        match &e.gateway {
            Some(g) => {
                gateway.valid.push(true);
                text(&mut g_version, &g.version);
                text(&mut g_digest, &g.config_digest);
                text(&mut g_detail, &g.detail);
            }
            None => {
                gateway.valid.push(false);
                for b in [&mut g_version, &mut g_digest, &mut g_detail] {
                    b.append_null();
                }
            }
        }
    }

    let identity = identity.finish(vec![Arc::new(subject.finish()), Arc::new(groups.finish()), Arc::new(agent_type.finish()), Arc::new(via.finish())])?;
    let decision = decision.finish(vec![Arc::new(d_action.finish()), Arc::new(d_stage.finish()), Arc::new(d_rule.finish()), Arc::new(d_reason.finish())])?;
    let f_children: Vec<ArrayRef> = f_cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    let findings: ArrayRef =
        Arc::new(ListArray::try_new(finding_item, OffsetBuffer::new(f_offsets.into()), finding.finish(f_children)?, Some(NullBuffer::from(f_valid)))?);
    let approval = approval.finish(vec![
        Arc::new(a_id.finish()),
        Arc::new(a_state.finish()),
        Arc::new(a_digest.finish()),
        Arc::new(a_groups.finish()),
        Arc::new(a_by.finish()),
        Arc::new(a_reason.finish()),
        Arc::new(a_waited.finish()),
        Arc::new(a_expires.finish()),
    ])?;
    let tools: ArrayRef = Arc::new(ListArray::try_new(
        tool_item,
        OffsetBuffer::new(t_offsets.into()),
        tool_entry.finish(vec![Arc::new(t_name.finish()), Arc::new(t_digest.finish())])?,
        Some(NullBuffer::from(t_valid)),
    )?);
    let pin = pin.finish(vec![Arc::new(p_tool.finish()), Arc::new(p_change.finish()), Arc::new(p_old.finish()), Arc::new(p_new.finish())])?;
    let gateway = gateway.finish(vec![Arc::new(g_version.finish()), Arc::new(g_digest.finish()), Arc::new(g_detail.finish())])?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(v.finish()),
        Arc::new(id.finish()),
        Arc::new(ts.finish()),
        Arc::new(kind.finish()),
        Arc::new(instance.finish()),
        Arc::new(worker.finish()),
        Arc::new(session.finish()),
        Arc::new(mcp_session.finish()),
        identity,
        Arc::new(route.finish()),
        Arc::new(upstream.finish()),
        Arc::new(direction.finish()),
        Arc::new(method.finish()),
        Arc::new(rpc_id.finish()),
        Arc::new(tool.finish()),
        Arc::new(payload.finish()),
        Arc::new(truncated.finish()),
        Arc::new(bytes.finish()),
        Arc::new(latency.finish()),
        Arc::new(status.finish()),
        Arc::new(error_code.finish()),
        decision,
        findings,
        approval,
        tools,
        pin,
        gateway,
    ];
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, BooleanArray};
    use datafusion::arrow::datatypes::Schema;

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
        let fixtures = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/fixtures/v1.jsonl")).unwrap();
        let mut docs: Vec<Vec<u8>> = fixtures.lines().filter(|l| !l.trim().is_empty()).map(|l| l.as_bytes().to_vec()).collect();
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
