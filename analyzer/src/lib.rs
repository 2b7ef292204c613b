//! Sluice analyzer: the offline side of the session record.
//!
//! ```text
//!  spool dir / Kafka ──ingest──▶ Arrow batches ──by hour, dedup by id──▶ Parquet archive
//!                                                                         ARCHIVE/events/date=…/hour=…/part-….parquet
//!  archive ──query (DataFusion: events, alerts, views)──▶ sql / replay / reports / chain rules
//! ```
//!
//! `archive` owns the file layout and atomic writes, `ingest` the sources, `query` the SQL
//! session (tables and views), `replay` a session's transcript, `maintain` compaction and
//! retention.

pub mod alerts;
pub mod archive;
pub mod chains;
pub mod decode;
pub mod ingest;
pub mod json;
pub mod maintain;
pub mod query;
pub mod replay;
pub mod report;
pub mod run;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use std::sync::Arc;

/// The `alerts` table: one row per chain detection, with the events that triggered it.
pub fn alerts_schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("session", DataType::Utf8, true),
        Field::new("subject", DataType::Utf8, true),
        Field::new("summary", DataType::Utf8, false),
        Field::new("evidence", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
    ])
}
