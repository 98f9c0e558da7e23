//! Teacher-forced verification of generations on the real SmolLM2 decoders: honest generations pass, a changed
//! token, a shortened answer and another model's text fail. The checked model is the fp32 version: the INT8 one's
//! incremental decoding is not reproduced by a whole-sequence pass (see the note in node/tests/it/generate.rs).

use std::path::Path;
use std::sync::Arc;

use mlbridge_node::generate::{Completion, Event, GenerateRequest, Generator, Sampling};
use mlbridge_node::inference::{Engine, EngineOptions, ModelRepository, OnnxRuntime};
use mlbridge_node::metrics::NodeMetrics;
use mlbridge_validator::generation::{GenerationClaim, Verdict, verify_generation};

/// An engine over a repository holding only the two SmolLM2 versions (links to the real files).
async fn engine() -> (tempfile::TempDir, Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m");
    for version in ["1", "2"] {
        let dst = tmp.path().join("smollm2-135m").join(version);
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(root.join(version)).unwrap() {
            let path = entry.unwrap().path();
            std::os::unix::fs::symlink(&path, dst.join(path.file_name().unwrap())).unwrap();
        }
    }
    let runtime = OnnxRuntime::init(None).expect("ONNX Runtime (run scripts/setup)");
    let repo = ModelRepository::open(tmp.path()).unwrap();
    let engine =
        Engine::start(runtime, repo, None, NodeMetrics::new().unwrap(), EngineOptions::default()).await.unwrap();
    (tmp, engine)
}

async fn generate(g: &Generator, req: GenerateRequest) -> Completion {
    let mut rx = g.submit(req).unwrap();
    while let Some(ev) = rx.recv().await {
        if let Event::Done(c) = ev {
            return c;
        }
    }
    panic!("no completion");
}

fn tolerance(g: &Generator) -> f32 {
    g.config().validation.max_abs_diff as f32
}

async fn check(
    g: &Arc<Generator>,
    prompt: &[u32],
    output: &[u32],
    sampling: Sampling,
    max_tokens: usize,
    stop: &[String],
) -> Verdict {
    let (g, prompt, output, stop) = (g.clone(), prompt.to_vec(), output.to_vec(), stop.to_vec());
    tokio::task::spawn_blocking(move || {
        let claim =
            GenerationClaim { prompt: &prompt, output: &output, sampling, max_tokens, stop: &stop, cancelled: false };
        verify_generation(&g, &claim, tolerance(&g)).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_generations_pass_and_altered_ones_fail() {
    let (_tmp, engine) = engine().await;
    let model = engine.generator("smollm2-135m", Some(1)).await.unwrap();
    let prompt = model.tokenizer().encode("Once upon a time, there was a").unwrap();
    let greedy = Sampling::GREEDY;
    let sampled = Sampling { temperature: 0.9, top_k: 50, top_p: 0.9, seed: 77 };
    let req = |sampling, max_tokens, stop: Vec<String>| GenerateRequest {
        prompt: prompt.clone(),
        max_tokens,
        sampling,
        stop,
    };

    let honest = generate(&model, req(greedy, 24, vec![])).await;
    assert_eq!(check(&model, &prompt, &honest.output, greedy, 24, &[]).await, Verdict::Valid);
    let honest_sampled = generate(&model, req(sampled, 24, vec![])).await;
    assert_eq!(check(&model, &prompt, &honest_sampled.output, sampled, 24, &[]).await, Verdict::Valid);

    // One token changed (to the one after it in the vocabulary), greedy and sampled.
    for (output, sampling) in [(&honest.output, greedy), (&honest_sampled.output, sampled)] {
        let mut changed = output.clone();
        changed[5] = (changed[5] + 1) % 49_152;
        let verdict = check(&model, &prompt, &changed, sampling, 24, &[]).await;
        assert!(matches!(verdict, Verdict::Invalid { position: 5, .. }), "{verdict:?}");
    }
    // Shortened: no stop token, no stop string, fewer than max_tokens.
    let short = &honest.output[..20];
    let verdict = check(&model, &prompt, short, greedy, 24, &[]).await;
    assert!(matches!(verdict, Verdict::Invalid { position: 20, .. }), "{verdict:?}");
    // A sampled generation claimed with another seed.
    let other_seed = Sampling { seed: 78, ..sampled };
    assert!(matches!(
        check(&model, &prompt, &honest_sampled.output, other_seed, 24, &[]).await,
        Verdict::Invalid { .. }
    ));

    // A stop string ends it early, legitimately; the same output claimed without the stop string does not.
    let text = model.tokenizer().decode(&honest.output);
    let stop = vec![text.split_whitespace().nth(4).unwrap().to_owned()];
    let stopped = generate(&model, req(greedy, 24, stop.clone())).await;
    assert!(stopped.output.len() < 24, "{stopped:?}");
    assert_eq!(check(&model, &prompt, &stopped.output, greedy, 24, &stop).await, Verdict::Valid);
    assert!(matches!(check(&model, &prompt, &stopped.output, greedy, 24, &[]).await, Verdict::Invalid { .. }));

    // A stop string the output reaches before its end: the node should have stopped there (running on bills more).
    let word = vec![text.split_whitespace().nth(2).unwrap().to_owned()];
    let verdict = check(&model, &prompt, &honest.output, greedy, 24, &word).await;
    assert!(matches!(verdict, Verdict::Invalid { .. }), "ran past its stop string: {verdict:?}");
    // A token outside the vocabulary is refused before the model runs.
    let mut bogus = honest.output.clone();
    bogus[3] = 60_000;
    let verdict = check(&model, &prompt, &bogus, greedy, 24, &[]).await;
    assert!(matches!(verdict, Verdict::Invalid { position: 3, .. }), "{verdict:?}");

    // Another model's text: the INT8 model's greedy answer fails the fp32 model's check.
    let other = engine.generator("smollm2-135m", Some(2)).await.unwrap();
    let theirs = generate(&other, req(greedy, 48, vec![])).await;
    let verdict = check(&model, &prompt, &theirs.output, greedy, 48, &[]).await;
    assert!(matches!(verdict, Verdict::Invalid { .. }), "INT8 text passed the fp32 check: {verdict:?}");
}

/// A paid generation's audit record with its signed receipt, as a node keeps it.
fn record(
    model: &mlbridge_node::inference::ModelConfig,
    audit: mlbridge_sdk::generate::GenerationAudit,
) -> (mlbridge_sdk::protocol::ReceiptMsg, mlbridge_sdk::protocol::AuditRecord) {
    use alloy::primitives::{B256, U256};
    use alloy::signers::local::PrivateKeySigner;
    use mlbridge_sdk::protocol::{AuditRecord, ModelRef, ReceiptMsg, WIRE_VERSION};
    let node = PrivateKeySigner::from_bytes(&B256::repeat_byte(0x11)).unwrap();
    let receipt = mlbridge_sdk::receipt::Receipt {
        modelId: B256::from(*model.sha256.as_bytes()),
        inputHash: audit.input_hash(),
        outputHash: audit.output_hash(),
        units: U256::from((audit.prompt.len() + audit.output.len()) as u64),
        ..mlbridge_sdk::receipt::example_receipt(1)
    };
    let signed = ReceiptMsg::sign_single(&receipt, node.address(), &node, &Default::default()).unwrap();
    let record = AuditRecord {
        version: WIRE_VERSION,
        receipt: signed.clone(),
        model: ModelRef { name: model.name.clone(), version: Some(model.version), id: Some(model.sha256) },
        inputs: vec![],
        texts: vec![],
        outputs: vec![],
        generation: Some(audit),
    };
    (signed, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_judges_paid_generation_records_by_their_receipts() {
    use mlbridge_sdk::generate::{GenerationAudit, GenerationParams};
    use mlbridge_validator::reexec::{Reexecutor, Rejected};
    let (tmp, engine) = engine().await;
    let model = engine.generator("smollm2-135m", Some(1)).await.unwrap();
    let prompt = model.tokenizer().encode("The capital of France is").unwrap();
    let req = GenerateRequest { prompt: prompt.clone(), max_tokens: 12, sampling: Sampling::GREEDY, stop: vec![] };
    let honest = generate(&model, req).await;
    let params = GenerationParams { max_tokens: 12, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 1, stop: vec![] };
    let audit = |output: &[u32], finish: &str| GenerationAudit {
        prompt: prompt.clone(),
        params: params.clone(),
        output: output.to_vec(),
        finish: finish.into(),
    };
    let finish = honest.finish.as_str();
    let rx = Reexecutor::open(tmp.path(), None).await.unwrap();
    let v1 = model.config().clone();

    let (receipt, rec) = record(&v1, audit(&honest.output, finish));
    let check = rx.check(&receipt, &rec).await.unwrap();
    assert!(check.agrees, "an honest generation is judged right: {check:?}");
    // A client that went away: the tokens produced up to then pass, though the output ends early.
    let (receipt, rec) = record(&v1, audit(&honest.output[..5], "cancelled"));
    assert!(rx.check(&receipt, &rec).await.unwrap().agrees);
    // Cancelled or not, no token may follow a stop token.
    let mut past_stop = honest.output[..5].to_vec();
    past_stop.insert(2, 2);
    past_stop.truncate(5);
    let (receipt, rec) = record(&v1, audit(&past_stop, "cancelled"));
    assert!(!rx.check(&receipt, &rec).await.unwrap().agrees, "tokens after <|im_end|>");
    // The same early end claimed as a finished generation, and a changed token: wrong, so challenged.
    let (receipt, rec) = record(&v1, audit(&honest.output[..5], finish));
    assert!(!rx.check(&receipt, &rec).await.unwrap().agrees, "an early end without a reason");
    let mut changed = honest.output.clone();
    changed[2] = (changed[2] + 1000) % 49_152;
    let (receipt, rec) = record(&v1, audit(&changed, finish));
    let check = rx.check(&receipt, &rec).await.unwrap();
    assert!(!check.agrees && check.ours != receipt.output_hash, "{check:?}");
    // A record that does not hash to its receipt is not judged (never evidence), nor is the INT8 version's.
    let (receipt, mut rec) = record(&v1, audit(&honest.output, finish));
    rec.generation.as_mut().unwrap().output = changed;
    assert_eq!(rx.check(&receipt, &rec).await.unwrap_err(), Rejected::OutputHash);
    let (receipt, mut rec) = record(&v1, audit(&honest.output, finish));
    rec.generation.as_mut().unwrap().params.seed = 2;
    assert_eq!(rx.check(&receipt, &rec).await.unwrap_err(), Rejected::InputHash);
    let v2 = engine.generator("smollm2-135m", Some(2)).await.unwrap().config().clone();
    let (receipt, rec) = record(&v2, audit(&honest.output, finish));
    assert_eq!(rx.check(&receipt, &rec).await.unwrap_err(), Rejected::Unverifiable(receipt.model_id));
}
