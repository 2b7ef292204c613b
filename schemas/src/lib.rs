//! The contract between the Sluice dataplane and its analyzer: the session event ([`event`]),
//! its JSON Schema for outside consumers ([`event::json_schema`], checked in as
//! `schemas/event.schema.json`), the Arrow schema of the Parquet archive (feature `arrow`),
//! and the on-disk spool format both sides read ([`spool`]).
//!
//! ```text
//!  dataplane ── Event (JSON) ──▶ spool segment records ──▶ Kafka (key = session id)
//!                                        │                        │
//!                                        └──── analyzer ingest ◀──┘ ──▶ Parquet (arrow schema)
//! ```
//!
//! This crate stays light (serde, schemars, crc32c): the dataplane links it, and the heavy
//! analytics dependencies stay behind the `arrow` feature.

pub mod event;
pub mod spool;
#[cfg(feature = "arrow")]
pub mod arrow;

pub use event::{Event, Kind, OwnedEvent, VERSION};
