//! Detection and masking: rule packs as data, one Hyperscan database, normalisation against
//! evasion, decode-and-rescan, masking that keeps JSON valid, and streamed scanning.
//!
//! ```text
//!   rules/*.toml ──► rules (load + check) ──► engine (compile: block + streaming DB)
//!                                              │
//!   text ─► normalize ─► Hyperscan ─► validate / context / value trim ─► findings
//!             │ (byte map back)          │ base64 / percent candidates ─► decode ─► rescan
//!             └─► invisible (tags, bidi, zero-width on the original)
//!   JSON ─► json (leaf walk, `key: value` context) ─► mask (redact/partial/fingerprint/placeholder)
//!   chunks ─► stream (Hyperscan streaming mode, hold-back window) ─► masked chunks
//! ```
//!
//! Patterns avoid large bounded repeats: under SOM_LEFTMOST they make Hyperscan refuse the
//! pattern ("Pattern is too large") — the engine enforces each rule's `max_width` after
//! matching instead. [`hook`] puts the engine on the request path; [`cli`] is `sluice scan`.

pub mod cli;
pub mod dbcache;
pub mod decode;
pub mod engine;
pub mod hook;

pub mod invisible;
pub mod json;
pub mod lazy;
pub mod mask;
pub mod multipart;
pub mod normalize;
pub mod reverse;
pub mod rules;
pub mod runs;
pub mod stream;
pub mod validate;
pub mod url;
