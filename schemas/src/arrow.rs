//! The Arrow schema of the Parquet archive: one row per event, the columns of [`Event`] in
//! order. Nested records become structs and lists; `payload` stays JSON text (queried with
//! JSON functions), so a new payload shape never needs a schema change.
//!
//! [`Event`]: crate::Event

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use std::sync::Arc;

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn list_of(name: &str, item: DataType) -> Field {
    Field::new(name, DataType::List(Arc::new(Field::new("item", item, true))), true)
}

/// An optional record. Its fields are nullable even where the event requires them: a field of
/// an absent record must read as null (not an empty string) in every engine, and a Parquet
/// reader can only tell that from the field's own definition levels.
fn strukt(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

/// The archive's schema for [`crate::VERSION`]. Column `ts` is a UTC microsecond timestamp.
pub fn schema() -> Schema {
    let finding = DataType::Struct(Fields::from(vec![
        utf8("rule", false),
        utf8("kind", false),
        utf8("category", false),
        utf8("severity", false),
        utf8("path", false),
        utf8("action", false),
        utf8("fingerprint", true),
        utf8("encoding", true),
    ]));
    let tool = DataType::Struct(Fields::from(vec![utf8("name", false), utf8("digest", false)]));
    Schema::new(vec![
        Field::new("v", DataType::UInt16, false),
        utf8("id", false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        utf8("kind", false),
        utf8("instance", false),
        Field::new("worker", DataType::UInt32, true),
        utf8("session", true),
        utf8("mcp_session", true),
        strukt("identity", vec![utf8("subject", true), list_of("groups", DataType::Utf8), utf8("agent_type", true), utf8("via", true)]),
        utf8("route", true),
        utf8("upstream", true),
        utf8("direction", true),
        utf8("method", true),
        utf8("rpc_id", true),
        utf8("tool", true),
        utf8("payload", true),
        Field::new("payload_truncated", DataType::Boolean, false),
        Field::new("bytes", DataType::UInt64, true),
        Field::new("latency_us", DataType::UInt64, true),
        Field::new("status", DataType::UInt16, true),
        Field::new("error_code", DataType::Int64, true),
        strukt("decision", vec![utf8("action", true), utf8("stage", true), utf8("rule", true), utf8("reason", true)]),
        list_of("findings", finding),
        strukt(
            "approval",
            vec![
                utf8("id", true),
                utf8("state", true),
                utf8("args_digest", true),
                list_of("approver_groups", DataType::Utf8),
                utf8("by", true),
                utf8("reason", true),
                Field::new("waited_ms", DataType::UInt64, true),
                Field::new("expires_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            ],
        ),
        list_of("tools", tool),
        strukt("pin", vec![utf8("tool", true), utf8("change", true), utf8("old_digest", true), utf8("new_digest", true)]),
        strukt("gateway", vec![utf8("version", true), utf8("config_digest", true), utf8("detail", true)]),
        utf8("http_method", true),
        utf8("http_path", true),
        utf8("client_ip", true),
        utf8("task", true),
        utf8("call", true),
    ])
}

#[cfg(test)]
mod tests {
    /// Every top-level property of the JSON Schema is a column, in the same order, and no
    /// column lacks a property: the two schemas cannot drift apart.
    #[test]
    fn columns_match_the_event_fields() {
        let js = crate::event::json_schema();
        let props: Vec<&str> = js["properties"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let schema = super::schema();
        let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut p = props.clone();
        let mut c = cols.clone();
        p.sort_unstable();
        c.sort_unstable();
        assert_eq!(p, c);
    }
}
