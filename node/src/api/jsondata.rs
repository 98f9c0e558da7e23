//! A KServe input's `data` read in the same pass as the rest of the request: a flat array of numbers becomes a typed
//! vector at once (integers kept exact while every element is one), instead of being scanned once as raw JSON and
//! parsed again. Anything else (nested arrays, booleans, strings) is kept as JSON for the general path, which names
//! the bad element.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A tensor's `data`.
#[derive(Debug, PartialEq)]
pub enum JsonData {
    /// A flat array of integers.
    Ints(Vec<i64>),
    /// A flat array of numbers, at least one not an integer (as serde_json reads them: f64, so an f32 from it is
    /// exactly what a direct f32 parse gives).
    Floats(Vec<f64>),
    /// Anything else.
    Other(Value),
}

impl JsonData {
    /// The data as JSON (for the general path).
    pub fn into_value(self) -> Value {
        match self {
            Self::Ints(v) => Value::from(v),
            Self::Floats(v) => Value::Array(v.into_iter().map(Value::from).collect()),
            Self::Other(v) => v,
        }
    }
}

/// One element of the top-level array.
enum Elem {
    Int(i64),
    Float(f64),
    Other(Value),
}

struct ElemVisitor;

impl<'de> Visitor<'de> for ElemVisitor {
    type Value = Elem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tensor element")
    }

    fn visit_i64<E>(self, v: i64) -> Result<Elem, E> {
        Ok(Elem::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Elem, E> {
        Ok(i64::try_from(v).map_or_else(|_| Elem::Other(Value::from(v)), Elem::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Elem, E> {
        Ok(Elem::Float(v))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Elem, E> {
        Ok(Elem::Other(Value::Bool(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Elem, E> {
        Ok(Elem::Other(Value::String(v.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<Elem, E> {
        Ok(Elem::Other(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Elem, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Elem::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Elem, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(Elem::Other)
    }
}

impl<'de> Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElemVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = JsonData;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data (an array)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonData, A::Error> {
        let mut data = JsonData::Ints(Vec::with_capacity(seq.size_hint().unwrap_or(0)));
        while let Some(elem) = seq.next_element::<Elem>()? {
            data = match (data, elem) {
                (JsonData::Ints(mut v), Elem::Int(x)) => {
                    v.push(x);
                    JsonData::Ints(v)
                }
                (JsonData::Ints(v), Elem::Float(x)) => {
                    let mut f: Vec<f64> = v.into_iter().map(|i| i as f64).collect();
                    f.push(x);
                    JsonData::Floats(f)
                }
                (JsonData::Floats(mut v), Elem::Int(x)) => {
                    v.push(x as f64);
                    JsonData::Floats(v)
                }
                (JsonData::Floats(mut v), Elem::Float(x)) => {
                    v.push(x);
                    JsonData::Floats(v)
                }
                (data, elem) => {
                    let mut all = match data.into_value() {
                        Value::Array(a) => a,
                        other => vec![other],
                    };
                    all.push(match elem {
                        Elem::Int(x) => Value::from(x),
                        Elem::Float(x) => Value::from(x),
                        Elem::Other(v) => v,
                    });
                    JsonData::Other(Value::Array(all))
                }
            };
        }
        Ok(data)
    }
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DataVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> JsonData {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn flat_numbers_are_typed_in_one_pass_and_the_rest_is_kept() {
        assert_eq!(parse("[1, -2, 9007199254740993]"), JsonData::Ints(vec![1, -2, 9_007_199_254_740_993]), "exact");
        assert_eq!(parse("[1, 2.5, 3]"), JsonData::Floats(vec![1.0, 2.5, 3.0]));
        // An f32 taken from the f64 read here is the f32 serde_json reads directly, bit for bit.
        for text in ["0.1", "0.2577319587628866", "3.4028235e38", "1e-45", "-7.000000476837158"] {
            let JsonData::Floats(v) = parse(&format!("[0.5, {text}]")) else { panic!("floats") };
            assert_eq!((v[1] as f32).to_bits(), serde_json::from_str::<f32>(text).unwrap().to_bits(), "{text}");
        }
        assert_eq!(parse("[]"), JsonData::Ints(vec![]));
        assert_eq!(parse("[[1, 2], [3, 4]]"), JsonData::Other(serde_json::json!([[1, 2], [3, 4]])));
        assert_eq!(parse("[1, true]"), JsonData::Other(serde_json::json!([1, true])));
        assert_eq!(parse("[1.5, \"x\", null]"), JsonData::Other(serde_json::json!([1.5, "x", null])));
        assert_eq!(
            parse("[18446744073709551615]"),
            JsonData::Other(serde_json::json!([18_446_744_073_709_551_615u64]))
        );
        // `data` is an array (KServe v2); anything else fails the request's parse, naming the field.
        assert!(serde_json::from_str::<JsonData>("7").is_err());
        assert!(serde_json::from_str::<JsonData>("{\"a\": 1}").is_err());
    }
}
