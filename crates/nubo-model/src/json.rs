//! Strict JSON: refuses repeated keys and reports positions; then typed decoding with field paths.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::ParseError;

/// Parses `bytes` into a JSON value, refusing a key repeated in one object.
///
/// ```
/// use nubo_model::{ParseError, json::parse_strict};
///
/// assert!(parse_strict(br#"{"id": "a"}"#).is_ok());
/// let err = parse_strict(br#"{"components": {"cartridges": [], "cartridges": []}}"#).unwrap_err();
/// assert!(matches!(err, ParseError::DuplicateKey { ref key, ref path, .. } if key == "cartridges" && path == "components"));
/// ```
pub fn parse_strict(bytes: &[u8]) -> Result<Value, ParseError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed { path: "$".into() }
        .deserialize(&mut de)
        .map_err(syntax_or_duplicate)?;
    de.end().map_err(syntax_or_duplicate)?;
    Ok(value)
}

/// Parses `bytes` strictly, then decodes the value into `T`, naming the field of any shape error.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ParseError> {
    from_value(parse_strict(bytes)?)
}

/// Decodes an already parsed value into `T`, naming the field of any shape error.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ParseError::Shape {
            field: if path == "." { String::new() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

const DUP_MARK: &str = "\u{1}duplicate\u{1}";

fn syntax_or_duplicate(e: serde_json::Error) -> ParseError {
    let (line, column) = (e.line(), e.column());
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix(DUP_MARK) {
        // rest = "<key>\u{1}<path> at line L column C"
        let rest = rest.split(" at line ").next().unwrap_or(rest);
        let (key, path) = rest.split_once('\u{1}').unwrap_or((rest, "$"));
        return ParseError::DuplicateKey {
            key: key.to_owned(),
            path: path.to_owned(),
            line,
            column,
        };
    }
    let message = text
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_owned())
        .unwrap_or(text);
    ParseError::Syntax {
        message,
        line,
        column,
    }
}

struct Seed {
    path: String,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed {
            path: format!("{}[{}]", self.path, out.len()),
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "{DUP_MARK}{key}\u{1}{}",
                    self.path.trim_start_matches("$.")
                )));
            }
            let child = if self.path == "$" {
                key.clone()
            } else {
                format!("{}.{key}", self.path.trim_start_matches("$."))
            };
            let v = map.next_value_seed(Seed { path: child })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_key_is_named_with_its_object() {
        let e = parse_strict(b"{\"components\": {\"cartridges\": [], \n \"cartridges\": []}}")
            .unwrap_err();
        match e {
            ParseError::DuplicateKey {
                key, path, line, ..
            } => {
                assert_eq!(key, "cartridges");
                assert_eq!(path, "components");
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
        let e = parse_strict(br#"{"id":"a","id":"b"}"#).unwrap_err();
        assert!(
            matches!(e, ParseError::DuplicateKey { ref path, .. } if path == "$"),
            "{e:?}"
        );
        assert_eq!(e.field(), "id");
    }

    #[test]
    fn nested_paths_go_through_arrays() {
        let e = parse_strict(br#"{"a":[{"b":{"c":1,"c":2}}]}"#).unwrap_err();
        assert_eq!(e.field(), "a[0].b.c");
    }

    #[test]
    fn trailing_comma_reports_line_and_column() {
        let e = parse_strict(b"{\n \"a\": 1,\n}").unwrap_err();
        match e {
            ParseError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_strict(b"{} x"),
            Err(ParseError::Syntax { .. })
        ));
        assert!(matches!(parse_strict(b""), Err(ParseError::Syntax { .. })));
    }

    #[test]
    fn valid_json_round_trips_in_order() {
        let v = parse_strict(br#"{"z":1,"a":[true,null,"x",1.5]}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"z":1,"a":[true,null,"x",1.5]}"#);
    }
}
