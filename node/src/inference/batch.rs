//! Stacking requests into one batch and splitting the outputs again (pure functions, unit-tested).

use mlbridge_sdk::{Tensor, TensorData};

use super::config::ModelConfig;

/// Stack the inputs of several requests along the batch dimension, in config input order. Dimensions that are `-1`
/// in the config are padded with zeros to the longest request when the model allows ragged padding; otherwise all
/// requests must have equal shapes (the caller groups them).
pub(crate) fn stack(config: &ModelConfig, requests: &[Vec<Tensor>]) -> Vec<Tensor> {
    config
        .inputs
        .iter()
        .map(|spec| {
            let parts: Vec<&Tensor> =
                requests.iter().map(|r| r.iter().find(|t| t.name() == spec.name).expect("validated")).collect();
            let rank = parts[0].shape().len();
            let mut target: Vec<i64> =
                (0..rank).map(|i| parts.iter().map(|t| t.shape()[i]).max().unwrap_or(0)).collect();
            target[0] = parts.iter().map(|t| t.shape()[0]).sum();
            let mut data = empty_like(parts[0].data(), mlbridge_sdk::tensor::element_count(&target).unwrap_or(0));
            for t in &parts {
                append_padded(&mut data, t.data(), t.shape(), &target[1..]);
            }
            Tensor::new(spec.name.clone(), target, data).expect("stacked shape matches data")
        })
        .collect()
}

/// Whether two requests can share a batch without padding (all input shapes equal except the batch dimension).
pub(crate) fn same_sample_shapes(a: &[Tensor], b: &[Tensor]) -> bool {
    a.iter().all(|ta| b.iter().any(|tb| tb.name() == ta.name() && tb.shape()[1..] == ta.shape()[1..]))
}

/// Split batched tensors (batch dimension first) into per-request lists of `sizes` samples each (the batcher's
/// outputs; a validator's measurement of batched against lone runs).
pub fn split(outputs: Vec<Tensor>, sizes: &[usize]) -> Vec<Vec<Tensor>> {
    let mut per_request: Vec<Vec<Tensor>> = sizes.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for out in outputs {
        let (name, shape, data) = out.into_parts();
        let total = shape[0].max(1) as usize;
        let row = data.len() / total;
        let mut offset = 0;
        for (slot, &n) in per_request.iter_mut().zip(sizes) {
            let mut s = shape.clone();
            s[0] = n as i64;
            let part = slice(&data, offset * row, (offset + n) * row);
            slot.push(Tensor::new(name.clone(), s, part).expect("split shape matches data"));
            offset += n;
        }
    }
    per_request
}

macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::Uint8($v) => TensorData::Uint8($body),
            TensorData::Int8($v) => TensorData::Int8($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
            TensorData::Fp32($v) => TensorData::Fp32($body),
            TensorData::Fp64($v) => TensorData::Fp64($body),
        }
    };
}

fn empty_like(data: &TensorData, capacity: usize) -> TensorData {
    each_variant!(data, _v => Vec::with_capacity(capacity))
}

fn slice(data: &TensorData, from: usize, to: usize) -> TensorData {
    each_variant!(data, v => v[from..to].to_vec())
}

/// Append `src` (shape `[n, dims...]`) to `dst`, zero-padding every sample to `target` (the sample dims).
fn append_padded(dst: &mut TensorData, src: &TensorData, shape: &[i64], target: &[i64]) {
    fn go<T: Copy + Default>(dst: &mut Vec<T>, src: &[T], shape: &[usize], target: &[usize]) {
        if shape.is_empty() {
            dst.extend_from_slice(src);
            return;
        }
        let inner_src: usize = shape[1..].iter().product();
        let inner_dst: usize = target[1..].iter().product();
        for i in 0..target[0] {
            if i < shape[0] {
                go(dst, &src[i * inner_src..(i + 1) * inner_src], &shape[1..], &target[1..]);
            } else {
                dst.extend(std::iter::repeat_n(T::default(), inner_dst));
            }
        }
    }
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let mut full_target = vec![shape[0]];
    full_target.extend(target.iter().map(|&d| d as usize));
    match (dst, src) {
        (TensorData::Bool(d), TensorData::Bool(s)) => go(d, s, &shape, &full_target),
        (TensorData::Uint8(d), TensorData::Uint8(s)) => go(d, s, &shape, &full_target),
        (TensorData::Int8(d), TensorData::Int8(s)) => go(d, s, &shape, &full_target),
        (TensorData::Int32(d), TensorData::Int32(s)) => go(d, s, &shape, &full_target),
        (TensorData::Int64(d), TensorData::Int64(s)) => go(d, s, &shape, &full_target),
        (TensorData::Fp32(d), TensorData::Fp32(s)) => go(d, s, &shape, &full_target),
        (TensorData::Fp64(d), TensorData::Fp64(s)) => go(d, s, &shape, &full_target),
        _ => unreachable!("requests were validated against one datatype"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::config::{Task, TensorSpec, ValidationConfig};
    use mlbridge_sdk::DataType;

    fn config() -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            version: 1,
            description: String::new(),
            sha256: mlbridge_sdk::ModelId::of_bytes(b""),
            task: Task::Generic,
            precision: "fp32".into(),
            max_batch_size: 8,
            preferred_batch_size: None,
            max_queue_delay_us: 0,
            price_wei: 0,
            intra_op_threads: 1,
            intra_op_spinning: true,
            load: Default::default(),
            ragged_padding: true,
            inputs: vec![TensorSpec {
                name: "ids".into(),
                datatype: DataType::Int64,
                dims: vec![-1],
                max_dims: None,
                range: None,
                same_shape_as: None,
            }],
            outputs: vec![],
            tokenizer: None,
            generation: None,
            image: None,
            validation: ValidationConfig { max_abs_diff: 0.0 },
        }
    }

    #[test]
    fn stacks_with_padding_and_splits_back() {
        let a = vec![Tensor::new("ids", vec![1, 3], TensorData::Int64(vec![1, 2, 3])).unwrap()];
        let b = vec![Tensor::new("ids", vec![2, 1], TensorData::Int64(vec![4, 5])).unwrap()];
        let stacked = stack(&config(), &[a, b]);
        assert_eq!(stacked[0].shape(), &[3, 3]);
        assert_eq!(stacked[0].data(), &TensorData::Int64(vec![1, 2, 3, 4, 0, 0, 5, 0, 0]));
        let out = Tensor::new("o", vec![3, 2], TensorData::Fp32(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])).unwrap();
        let parts = split(vec![out], &[1, 2]);
        assert_eq!(parts[0][0].data(), &TensorData::Fp32(vec![0.0, 1.0]));
        assert_eq!(parts[1][0].shape(), &[2, 2]);
        assert_eq!(parts[1][0].data(), &TensorData::Fp32(vec![2.0, 3.0, 4.0, 5.0]));
    }

    #[test]
    fn sample_shape_comparison() {
        let a = vec![Tensor::new("x", vec![1, 3], TensorData::Fp32(vec![0.0; 3])).unwrap()];
        let b = vec![Tensor::new("x", vec![4, 3], TensorData::Fp32(vec![0.0; 12])).unwrap()];
        let c = vec![Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![0.0; 2])).unwrap()];
        assert!(same_sample_shapes(&a, &b));
        assert!(!same_sample_shapes(&a, &c));
    }
}
