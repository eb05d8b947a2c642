//! Errors of parsing and validation: every one names a field path and a reason.

use std::fmt;

use serde::Serialize;

/// One problem with one field of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field inside the artifact, e.g. `portMapping[0].port`; empty for the whole body.
    pub field: String,
    /// What is wrong, in words a user can act on.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "`{}`: {}", self.field, self.reason)
        }
    }
}

/// An accumulator of [`FieldError`]s, so that validation reports every problem at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    /// Records a problem with `field`.
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Requires a non-blank string.
    pub fn require_text(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
        }
    }

    /// Requires an identifier: non-empty, no whitespace, no `/`, at most 255 characters.
    pub fn require_id(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.add(field, "must not be empty");
        } else if value.len() > 255 {
            self.add(field, "must be at most 255 characters long");
        } else if value
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c.is_control())
        {
            self.add(
                field,
                format!("`{value}` must not contain whitespace, control characters or `/`"),
            );
        }
    }

    /// Requires a name that becomes part of cluster ids, member ids and host names (an
    /// application's id, an alias): letters, digits, `-` and `_`, so that `.`, which separates
    /// their parts, can never make two of them equal (`a.b` + `c` against `a` + `b.c`).
    pub fn require_name(&mut self, field: &str, value: &str) {
        self.require_id(field, value);
        if !value.is_empty()
            && !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.add(
                field,
                format!(
                    "`{value}` may contain only letters, digits, `-` and `_`: it becomes part of cluster ids and host names, whose parts `.` separates"
                ),
            );
        } else if value.starts_with('-') {
            self.add(field, format!("`{value}` must not start with `-`"));
        }
    }

    /// Requires `value` to be one of `allowed`.
    pub fn require_one_of(&mut self, field: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.add(
                field,
                format!(
                    "unknown value `{value}`; expected one of: {}",
                    allowed.join(", ")
                ),
            );
        }
    }

    /// Converts into a result: `Ok(())` when empty.
    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// Why a JSON body could not become a typed artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all (or trailing garbage).
    #[error("malformed JSON at line {line} column {column}: {message}")]
    Syntax {
        /// The parser's description.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The same key appears twice in one object.
    #[error(
        "the key `{key}` appears twice in the same object (`{path}`) at line {line} column {column}"
    )]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// Path of the object holding it (`$` for the top level).
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// Valid JSON of the wrong shape: a missing field, a wrong type.
    #[error("`{field}`: {reason}")]
    Shape {
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl ParseError {
    /// The field path this error is about (empty for syntax errors).
    pub fn field(&self) -> String {
        match self {
            ParseError::Syntax { .. } => String::new(),
            ParseError::DuplicateKey { path, key, .. } => {
                if path == "$" {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                }
            }
            ParseError::Shape { field, .. } => field.clone(),
        }
    }
}
