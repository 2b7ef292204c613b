//! Detection building blocks (issue 3, in progress): the validators that confirm a pattern
//! match is real ([`validate`]) and the normaliser that turns text into what an agent or
//! model would read while mapping every byte back to the original ([`normalize`]).
//!
//! [`rules`] loads and checks the rule packs (`dataplane/rules/*.toml`: patterns, validators,
//! context words, documentation and examples per rule); [`engine`] compiles them into one
//! Hyperscan database and scans; [`cli`] is `sluice scan`. Not on the request path yet: the
//! streaming mode, the masking strategies beyond redaction and the wiring into the hooks
//! arrive with the rest of the detection issue. Patterns avoid large bounded repeats: under
//! SOM_LEFTMOST they make Hyperscan refuse the pattern ("Pattern is too large") — the engine
//! enforces each rule's `max_width` after matching instead.

pub mod cli;
pub mod engine;
pub mod normalize;
pub mod rules;
pub mod validate;
