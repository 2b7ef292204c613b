//! Detection building blocks (issue 3, in progress): the validators that confirm a pattern
//! match is real ([`validate`]) and the normaliser that turns text into what an agent or
//! model would read while mapping every byte back to the original ([`normalize`]).
//!
//! [`rules`] loads and checks the rule packs (`dataplane/rules/*.toml`: patterns, validators,
//! context words, documentation and examples per rule). Not wired into the request path yet:
//! the Hyperscan scanner and the masker that use these arrive with the rest of the detection
//! issue (a first scanner compiled the packs with SOM_LEFTMOST in minutes and GBs; the
//! patterns' large bounded repeats need tuning first, see the issue notes).

pub mod normalize;
pub mod rules;
pub mod validate;
