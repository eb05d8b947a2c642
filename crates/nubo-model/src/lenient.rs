//! Stratos writes numbers and booleans as strings (`"port": "80"`, `"multiTenant": "false"`).
//! These `deserialize_with` helpers accept both forms; serialization writes plain JSON values.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

struct NumVisitor;

/// A number as read: integral or not.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl<'de> Visitor<'de> for NumVisitor {
    type Value = Num;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number (or a string holding one)")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
        Ok(Num::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
        Ok(Num::Int(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
        Ok(Num::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
        let t = v.trim();
        if let Ok(i) = t.parse::<i128>() {
            return Ok(Num::Int(i));
        }
        match t.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Num::Float(f)),
            _ => Err(E::custom(format!(
                "expected a number, found the string `{v}`"
            ))),
        }
    }
}

fn integer<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D, what: &str) -> Result<T, D::Error> {
    let n = match d.deserialize_any(NumVisitor)? {
        Num::Int(i) => i,
        Num::Float(f) if f.fract() == 0.0 && f.abs() < 1e18 => f as i128,
        Num::Float(f) => {
            return Err(de::Error::custom(format!(
                "expected {what}, found the fraction {f}"
            )));
        }
    };
    T::try_from(n).map_err(|_| de::Error::custom(format!("{n} is out of range for {what}")))
}

/// A non-negative 32-bit integer.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    integer(d, "a non-negative integer")
}

/// An optional non-negative 32-bit integer (`null` = absent).
pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<Lenient<u32>>::deserialize(d).map(|o| o.map(|l| l.0))
}

/// A TCP/UDP port number.
pub fn u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    integer(d, "a port number (0-65535)")
}

/// An optional port number.
pub fn opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Option::<Lenient<u16>>::deserialize(d).map(|o| o.map(|l| l.0))
}

/// An optional signed 64-bit integer.
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Lenient<i64>>::deserialize(d).map(|o| o.map(|l| l.0))
}

/// A finite float.
pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match d.deserialize_any(NumVisitor)? {
        Num::Int(i) => Ok(i as f64),
        Num::Float(f) => Ok(f),
    }
}

/// Writes a float as an integer when it has no fractional part (`20`, not `20.0`).
pub fn ser_f64<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

struct BoolVisitor;

impl<'de> Visitor<'de> for BoolVisitor {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean (or the string \"true\" or \"false\")")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(E::custom(format!(
                "expected true or false, found the string `{v}`"
            ))),
        }
    }
}

/// An optional boolean.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Option::<LenientBool>::deserialize(d).map(|o| o.map(|l| l.0))
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// A string; a number or boolean is taken as its text (property values).
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(TextVisitor)
}

struct Lenient<T>(T);

impl<'de, T: TryFrom<i128>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        integer(d, "an integer").map(Lenient)
    }
}

struct LenientBool(bool);

impl<'de> Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BoolVisitor).map(LenientBool)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::u16")]
        port: u16,
        #[serde(default, deserialize_with = "super::opt_bool")]
        mt: Option<bool>,
        #[serde(deserialize_with = "super::f64")]
        f: f64,
    }

    fn parse(s: &str) -> Result<T, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn strings_and_numbers_are_both_accepted() {
        let t = parse(r#"{"port":"80","mt":"false","f":"70"}"#).unwrap();
        assert_eq!((t.port, t.mt, t.f), (80, Some(false), 70.0));
        let t = parse(r#"{"port":8080,"mt":true,"f":0.5}"#).unwrap();
        assert_eq!((t.port, t.mt, t.f), (8080, Some(true), 0.5));
        let t = parse(r#"{"port":80,"f":1}"#).unwrap();
        assert_eq!(t.mt, None);
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            parse(r#"{"port":"eighty","f":1}"#)
                .unwrap_err()
                .contains("`eighty`")
        );
        assert!(
            parse(r#"{"port":70000,"f":1}"#)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse(r#"{"port":80.5,"f":1}"#)
                .unwrap_err()
                .contains("fraction")
        );
        assert!(
            parse(r#"{"port":80,"mt":"yes","f":1}"#)
                .unwrap_err()
                .contains("`yes`")
        );
    }
}
