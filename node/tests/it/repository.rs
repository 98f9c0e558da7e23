//! The model repository: every model loads and answers with its declared shapes; broken repositories and bad
//! requests give typed errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlbridge_node::Error;
use mlbridge_node::inference::{ModelRepository, OnnxRuntime};
use mlbridge_sdk::{ModelId, Tensor, TensorData};

fn models_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn runtime() -> Arc<OnnxRuntime> {
    OnnxRuntime::init(None).expect("ONNX Runtime (run scripts/setup)")
}

/// Copy one model version into a fresh repository so a test can break it.
fn copy_model(name: &str, version: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = models_root().join(name).join(version.to_string());
    let dst = tmp.path().join(name).join(version.to_string());
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    (tmp, dst)
}

fn f32s(t: &Tensor) -> &[f32] {
    match t.data() {
        TensorData::Fp32(v) => v,
        other => panic!("expected FP32, got {:?}", other.datatype()),
    }
}

#[test]
fn every_model_loads_and_returns_declared_shapes() {
    let rt = runtime();
    let repo = ModelRepository::open(&models_root()).unwrap();
    let keys: Vec<String> = repo.configs().map(|c| c.key()).collect();
    for expected in ["minilm-l6/1", "minilm-l6/2", "mlp-tiny/1", "mlp-tiny/2", "orientation/1"] {
        assert!(keys.contains(&expected.to_string()), "{expected} missing from {keys:?}");
    }
    // (Text-generation models have their own tests: tests/it/generate.rs.)
    for config in repo.configs().filter(|c| c.task != mlbridge_node::inference::Task::TextGeneration) {
        let model = repo.load(&rt, &config.name, Some(config.version)).unwrap();
        assert_eq!(model.id(), config.sha256);
        assert_eq!(model.id(), ModelId::of_file(&repo.version_dir(config).join("model.onnx")).unwrap());
        let batch = config.max_batch_size.min(3);
        let outputs = model.run(config.example_inputs(batch, 12)).unwrap();
        assert_eq!(outputs.len(), config.outputs.len());
        for (out, spec) in outputs.iter().zip(&config.outputs) {
            assert_eq!(out.name(), spec.name);
            assert_eq!(out.datatype(), spec.datatype);
            assert_eq!(out.shape()[0], batch as i64, "{}: batch dimension", config.key());
            for (got, want) in out.shape()[1..].iter().zip(&spec.dims) {
                assert!(*want == -1 || got == want, "{}: shape {:?} vs {:?}", config.key(), out.shape(), spec.dims);
            }
            assert!(f32s(out).iter().all(|v| v.is_finite()), "{}: non-finite output", config.key());
        }
    }
}

#[test]
fn latest_version_is_the_highest() {
    let repo = ModelRepository::open(&models_root()).unwrap();
    assert_eq!(repo.config("minilm-l6", None).unwrap().version, 2);
    assert_eq!(repo.config("minilm-l6", Some(1)).unwrap().precision, "fp32");
}

#[test]
fn embeddings_are_unit_norm_and_int8_is_batch_invariant() {
    let rt = runtime();
    let repo = ModelRepository::open(&models_root()).unwrap();
    let int8 = repo.load(&rt, "minilm-l6", Some(2)).unwrap();
    // Two different "sentences": [CLS] ids... [SEP], the second padded.
    let ids = vec![101, 2023, 2003, 1037, 3231, 102, 101, 7592, 2088, 102, 0, 0];
    let mask = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    let batch = |ids: Vec<i64>, mask: Vec<i64>, n: i64| {
        let len = ids.len() as i64 / n;
        vec![
            Tensor::new("input_ids", vec![n, len], TensorData::Int64(ids)).unwrap(),
            Tensor::new("attention_mask", vec![n, len], TensorData::Int64(mask)).unwrap(),
        ]
    };
    let both = int8.run(batch(ids.clone(), mask.clone(), 2)).unwrap();
    let first_alone = int8.run(batch(ids[..6].to_vec(), mask[..6].to_vec(), 1)).unwrap();
    let both = f32s(&both[0]);
    let alone = f32s(&first_alone[0]);
    assert_eq!(both.len(), 768);
    for row in both.chunks(384) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let max_diff = alone.iter().zip(&both[..384]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-5, "a sample's INT8 embedding changed with its batch-mate: {max_diff}");
    // The padded sample too: alone (4 tokens, no padding) it must match its padded row in the batch within the
    // tolerance validators use for this model, or a re-execution could accuse an honest node.
    let second_alone = int8.run(batch(ids[6..10].to_vec(), mask[6..10].to_vec(), 1)).unwrap();
    let second_alone = f32s(&second_alone[0]);
    let padded_diff = second_alone.iter().zip(&both[384..]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let tolerance = int8.config().validation.max_abs_diff as f32;
    assert!(padded_diff <= tolerance, "padding changed a sample's embedding by {padded_diff} > {tolerance}");
    println!("batch invariance: unpadded {max_diff:e}, padded {padded_diff:e} (tolerance {tolerance:e})");
}

#[test]
fn corrupted_model_file_is_a_hash_mismatch() {
    let (tmp, dir) = copy_model("mlp-tiny", 1);
    let path = dir.join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let repo = ModelRepository::open(tmp.path()).unwrap();
    let err = repo.load(&runtime(), "mlp-tiny", None).unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("scripts/models"), "{err}");
}

#[test]
fn missing_model_file_and_unknown_model_are_typed() {
    let (tmp, dir) = copy_model("mlp-tiny", 1);
    std::fs::remove_file(dir.join("model.onnx")).unwrap();
    let repo = ModelRepository::open(tmp.path()).unwrap();
    let err = repo.load(&runtime(), "mlp-tiny", Some(1)).unwrap_err();
    assert!(matches!(err, Error::ModelFileMissing { .. }), "{err}");
    let err = repo.load(&runtime(), "no-such-model", None).unwrap_err();
    assert!(matches!(err, Error::UnknownModel { .. }), "{err}");
    let err = repo.load(&runtime(), "mlp-tiny", Some(9)).unwrap_err();
    assert!(matches!(err, Error::UnknownModel { version: Some(9), .. }), "{err}");
    let err = ModelRepository::open(Path::new("/nonexistent/models")).unwrap_err();
    assert!(matches!(err, Error::RepositoryNotFound(_)), "{err}");
}

#[test]
fn config_that_disagrees_with_the_graph_is_refused() {
    let (tmp, dir) = copy_model("mlp-tiny", 1);
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("dims = [256]", "dims = [128]")).unwrap();
    let repo = ModelRepository::open(tmp.path()).unwrap();
    let err = repo.load(&runtime(), "mlp-tiny", Some(1)).unwrap_err();
    assert!(matches!(err, Error::SignatureMismatch { .. }), "{err}");
}

#[test]
fn garbage_with_a_matching_hash_is_a_session_error() {
    let (tmp, dir) = copy_model("mlp-tiny", 1);
    let garbage = b"this is not an ONNX model".to_vec();
    std::fs::write(dir.join("model.onnx"), &garbage).unwrap();
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let recorded = text.lines().find(|l| l.starts_with("sha256 = ")).unwrap().to_owned();
    let text = text.replace(&recorded, &format!("sha256 = \"{}\"", ModelId::of_bytes(&garbage)));
    std::fs::write(&config, text).unwrap();
    let repo = ModelRepository::open(tmp.path()).unwrap();
    let err = repo.load(&runtime(), "mlp-tiny", Some(1)).unwrap_err();
    assert!(matches!(err, Error::SessionCreate { .. }), "{err}");
}

#[test]
fn bad_requests_get_typed_errors_before_onnx_runtime() {
    fn with_value(t: Tensor, at: usize, v: f32) -> Tensor {
        let (name, shape, data) = t.into_parts();
        let TensorData::Fp32(mut data) = data else { unreachable!("built as fp32") };
        data[at] = v;
        Tensor::new(name, shape, TensorData::Fp32(data)).unwrap()
    }
    let repo = ModelRepository::open(&models_root()).unwrap();
    let model = repo.load(&runtime(), "mlp-tiny", Some(1)).unwrap();
    let input = |name: &str, shape: Vec<i64>| {
        let n = shape.iter().product::<i64>() as usize;
        Tensor::new(name, shape, TensorData::Fp32(vec![0.5; n])).unwrap()
    };
    type Case = (Vec<Tensor>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (vec![], |e| matches!(e, Error::MissingInput { .. })),
        (vec![input("inputs", vec![1, 256])], |e| matches!(e, Error::UnknownInput { .. })),
        (vec![input("input", vec![1, 255])], |e| matches!(e, Error::WrongShape { .. })),
        (vec![input("input", vec![256])], |e| matches!(e, Error::WrongShape { .. })),
        (vec![input("input", vec![65, 256])], |e| matches!(e, Error::BadBatch { batch: 65, max: 64, .. })),
        (vec![input("input", vec![0, 256])], |e| matches!(e, Error::BadBatch { batch: 0, .. })),
        (vec![input("input", vec![1, 256]), input("input", vec![1, 256])], |e| matches!(e, Error::MissingInput { .. })),
        (vec![Tensor::new("input", vec![1, 256], TensorData::Int64(vec![0; 256])).unwrap()], |e| {
            matches!(e, Error::WrongDataType { .. })
        }),
        // NaN or an infinity (CBOR over p2p can carry them): no validator could check the answer.
        (vec![with_value(input("input", vec![2, 256]), 300, f32::NAN)], |e| matches!(e, Error::NotFinite { .. })),
        (vec![with_value(input("input", vec![1, 256]), 7, f32::NEG_INFINITY)], |e| {
            matches!(e, Error::NotFinite { .. })
        }),
    ];
    for (i, (inputs, check)) in cases.into_iter().enumerate() {
        let err = model.run(inputs).unwrap_err();
        assert!(check(&err), "case {i}: {err}");
    }
    // And a good request still works after all that.
    assert_eq!(model.run(vec![input("input", vec![2, 256])]).unwrap()[0].shape(), &[2, 10]);
}
