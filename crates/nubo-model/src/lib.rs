//! Nubo's domain model: the Stratos 4.1 artifacts as typed Rust values.
//!
//! The JSON is Stratos' JSON, field for field. Numbers and booleans are accepted as strings
//! (`"port": "80"`) and written back as plain JSON numbers and booleans. Fields Nubo does not know
//! are kept in `extra` and returned verbatim. Parsing goes through [`json::parse_strict`], which
//! refuses a key repeated in one object instead of keeping one of the two silently.
//!
//! This crate is pure: no I/O, no clock. Validation of a single artifact is
//! [`Artifact::validate`]; checks that need other artifacts go through [`refs::Catalog`].

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod artifacts;
pub mod error;
pub mod json;
pub mod lenient;
pub mod refs;

pub use artifacts::*;
pub use error::{FieldError, ParseError, Problems};
pub use refs::{Catalog, Reference};

/// The tenant id of the super tenant, as in Stratos (Carbon's `-1234`).
pub const SUPER_TENANT_ID: i64 = -1234;
/// The domain of the super tenant.
pub const SUPER_TENANT_DOMAIN: &str = "carbon.super";
