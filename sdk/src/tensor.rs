//! Named tensors, shaped like the KServe v2 / Open Inference Protocol: a `name`, a `datatype`, a `shape` (batch
//! dimension included) and flat row-major `data`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Tensor element types, named as in the KServe v2 protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// Booleans.
    Bool,
    /// Unsigned 8-bit integers.
    Uint8,
    /// Signed 8-bit integers.
    Int8,
    /// Signed 32-bit integers.
    Int32,
    /// Signed 64-bit integers.
    Int64,
    /// IEEE 754 single precision.
    Fp32,
    /// IEEE 754 double precision.
    Fp64,
}

impl DataType {
    /// The protocol name (`"FP32"`, `"INT64"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Int8 => "INT8",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
        }
    }

    /// Size of one element in bytes.
    pub fn size_of(self) -> usize {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Int32 | Self::Fp32 => 4,
            Self::Int64 | Self::Fp64 => 8,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "BOOL" => Self::Bool,
            "UINT8" => Self::Uint8,
            "INT8" => Self::Int8,
            "INT32" => Self::Int32,
            "INT64" => Self::Int64,
            "FP32" => Self::Fp32,
            "FP64" => Self::Fp64,
            other => return Err(Error::UnknownDataType(other.to_owned())),
        })
    }
}

/// Flat, row-major tensor contents of one element type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TensorData {
    /// `BOOL` elements.
    Bool(Vec<bool>),
    /// `UINT8` elements.
    Uint8(Vec<u8>),
    /// `INT8` elements.
    Int8(Vec<i8>),
    /// `INT32` elements.
    Int32(Vec<i32>),
    /// `INT64` elements.
    Int64(Vec<i64>),
    /// `FP32` elements.
    Fp32(Vec<f32>),
    /// `FP64` elements.
    Fp64(Vec<f64>),
}

impl TensorData {
    /// The element type.
    pub fn datatype(&self) -> DataType {
        match self {
            Self::Bool(_) => DataType::Bool,
            Self::Uint8(_) => DataType::Uint8,
            Self::Int8(_) => DataType::Int8,
            Self::Int32(_) => DataType::Int32,
            Self::Int64(_) => DataType::Int64,
            Self::Fp32(_) => DataType::Fp32,
            Self::Fp64(_) => DataType::Fp64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::Bool(v) => v.len(),
            Self::Uint8(v) => v.len(),
            Self::Int8(v) => v.len(),
            Self::Int32(v) => v.len(),
            Self::Int64(v) => v.len(),
            Self::Fp32(v) => v.len(),
            Self::Fp64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append the elements as little-endian bytes (booleans as one byte each): the layout of canonical bytes and of
    /// KServe's binary tensor data.
    pub fn write_le(&self, out: &mut Vec<u8>) {
        match self {
            Self::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            Self::Uint8(v) => out.extend_from_slice(v),
            Self::Int8(v) => out.extend(v.iter().map(|&x| x as u8)),
            Self::Int32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Int64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Fp32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Fp64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    /// Elements of `datatype` read from little-endian `bytes` ([`Self::write_le`]'s layout); `None` unless `bytes`
    /// holds a whole number of elements.
    pub fn from_le(datatype: DataType, bytes: &[u8]) -> Option<Self> {
        fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N"))).collect()
        }
        if !bytes.len().is_multiple_of(datatype.size_of()) {
            return None;
        }
        Some(match datatype {
            DataType::Bool => Self::Bool(bytes.iter().map(|&b| b != 0).collect()),
            DataType::Uint8 => Self::Uint8(bytes.to_vec()),
            DataType::Int8 => Self::Int8(bytes.iter().map(|&b| b as i8).collect()),
            DataType::Int32 => Self::Int32(le(bytes, i32::from_le_bytes)),
            DataType::Int64 => Self::Int64(le(bytes, i64::from_le_bytes)),
            DataType::Fp32 => Self::Fp32(le(bytes, f32::from_le_bytes)),
            DataType::Fp64 => Self::Fp64(le(bytes, f64::from_le_bytes)),
        })
    }
}

/// A named tensor whose data agrees with its shape (checked on construction and on deserialization).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawTensor")]
pub struct Tensor {
    name: String,
    shape: Vec<i64>,
    data: TensorData,
}

#[derive(Deserialize)]
struct RawTensor {
    name: String,
    shape: Vec<i64>,
    data: TensorData,
}

impl TryFrom<RawTensor> for Tensor {
    type Error = Error;

    fn try_from(raw: RawTensor) -> Result<Self> {
        Self::new(raw.name, raw.shape, raw.data)
    }
}

/// Number of elements of a concrete shape, or `None` for a negative dimension or an overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
}

impl Tensor {
    /// A tensor, checking that `data` holds exactly as many elements as `shape` implies.
    pub fn new(name: impl Into<String>, shape: Vec<i64>, data: TensorData) -> Result<Self> {
        let name = name.into();
        let Some(expected) = element_count(&shape) else {
            return Err(Error::InvalidShape { name, shape });
        };
        if expected != data.len() {
            return Err(Error::ElementCount { name, shape, expected, actual: data.len() });
        }
        Ok(Self { name, shape, data })
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shape, batch dimension first.
    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The element type.
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// The contents.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Take the contents.
    pub fn into_parts(self) -> (String, Vec<i64>, TensorData) {
        (self.name, self.shape, self.data)
    }

    /// Size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.data.len() * self.datatype().size_of()
    }

    /// Canonical bytes: name, datatype, shape and little-endian data, each length-prefixed. Equal tensors give equal
    /// bytes on every platform (used for cache keys and input hashes).
    pub fn canonical_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.name.len() as u64).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.datatype().as_str().as_bytes());
        out.extend_from_slice(&(self.shape.len() as u64).to_le_bytes());
        for d in &self.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        self.data.write_le(out);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in [
            DataType::Bool,
            DataType::Uint8,
            DataType::Int8,
            DataType::Int32,
            DataType::Int64,
            DataType::Fp32,
            DataType::Fp64,
        ] {
            assert_eq!(dt.as_str().parse::<DataType>().unwrap(), dt);
            assert_eq!(serde_json::to_string(&dt).unwrap(), format!("\"{dt}\""));
        }
        assert!(matches!("FP16X".parse::<DataType>(), Err(Error::UnknownDataType(_))));
    }

    #[test]
    fn rejects_count_mismatch_and_negative_dims() {
        let err = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 5])).unwrap_err();
        assert!(matches!(err, Error::ElementCount { expected: 6, actual: 5, .. }), "{err}");
        let err = Tensor::new("x", vec![-1, 3], TensorData::Fp32(vec![])).unwrap_err();
        assert!(matches!(err, Error::InvalidShape { .. }), "{err}");
        let err = Tensor::new("x", vec![i64::MAX, i64::MAX], TensorData::Fp32(vec![])).unwrap_err();
        assert!(matches!(err, Error::InvalidShape { .. }), "{err}");
    }

    #[test]
    fn serde_round_trip_validates() {
        let t = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![1.0, 2.0])).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Tensor>(&json).unwrap(), t);
        let bad = r#"{"name":"x","shape":[3],"data":{"FP32":[1.0]}}"#;
        assert!(serde_json::from_str::<Tensor>(bad).is_err());
    }

    #[test]
    fn canonical_bytes_distinguish_shape_and_type() {
        let bytes = |t: Tensor| {
            let mut v = Vec::new();
            t.canonical_bytes(&mut v);
            v
        };
        let a = bytes(Tensor::new("x", vec![2, 1], TensorData::Int32(vec![1, 2])).unwrap());
        let b = bytes(Tensor::new("x", vec![1, 2], TensorData::Int32(vec![1, 2])).unwrap());
        let c =
            bytes(Tensor::new("x", vec![2, 1], TensorData::Fp32(vec![f32::from_bits(1), f32::from_bits(2)])).unwrap());
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    proptest! {
        #[test]
        fn construction_agrees_with_element_count(shape in prop::collection::vec(0i64..6, 0..4), extra in 0usize..3) {
            let n = element_count(&shape).unwrap();
            let ok = Tensor::new("t", shape.clone(), TensorData::Int64(vec![0; n]));
            prop_assert!(ok.is_ok());
            let bad = Tensor::new("t", shape, TensorData::Int64(vec![0; n + extra]));
            prop_assert_eq!(bad.is_ok(), extra == 0);
        }
    }
}
