//! Detection building blocks (issue 3, in progress): the validators that confirm a pattern
//! match is real ([`validate`]) and the normaliser that turns text into what an agent or
//! model would read while mapping every byte back to the original ([`normalize`]).
//!
//! Not wired into the request path yet: the Hyperscan rule packs, the scanner and the masker
//! that use these arrive with the rest of the detection issue.

pub mod normalize;
pub mod validate;
