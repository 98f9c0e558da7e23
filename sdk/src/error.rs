//! The SDK's error type.

use crate::tensor::DataType;

/// Result alias with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor's data does not hold as many elements as its shape says.
    #[error(
        "tensor '{name}': shape {shape:?} needs {expected} elements but {actual} were given; send shape and data that agree"
    )]
    ElementCount {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<i64>,
        /// Elements the shape implies.
        expected: usize,
        /// Elements present.
        actual: usize,
    },
    /// A tensor shape has a negative dimension or its element count overflows.
    #[error("tensor '{name}': shape {shape:?} is not a valid concrete shape; every dimension must be >= 0")]
    InvalidShape {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<i64>,
    },
    /// The declared datatype does not match the data.
    #[error("tensor '{name}': datatype is {declared} but the data holds {actual}; send data of the declared datatype")]
    DataTypeMismatch {
        /// Tensor name.
        name: String,
        /// The datatype named in the request.
        declared: DataType,
        /// The datatype of the data.
        actual: DataType,
    },
    /// A datatype name that the KServe v2 protocol does not define.
    #[error("unknown tensor datatype '{0}'; use one of BOOL, UINT8, INT8, INT32, INT64, FP32, FP64")]
    UnknownDataType(String),
    /// A model identifier that is not 64 hex digits.
    #[error("'{0}' is not a model id; a model id is the sha256 of the ONNX file, 64 hex digits")]
    InvalidModelId(String),
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
