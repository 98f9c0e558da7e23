//! Image classification on the real MobileNetV2 and EfficientNet-Lite0 graphs with real photos (scikit-image's
//! sample images, installed by scripts/setup): the classify endpoint (raw and base64 bodies), the same job as a KServe
//! request with an encoded image, hostile images, the preprocessing cache, and a paid image job's receipt.

use std::path::PathBuf;

use alloy::primitives::U256;
use mlbridge_sdk::protocol::tensors_hash;
use serde_json::{Value, json};

use crate::chain::*;
use crate::paid::{open_raw, voucher, wait_confirmed};
use crate::support::*;

/// A sample photo shipped in scikit-image's wheel.
fn photo(name: &str) -> Vec<u8> {
    let lib = models_root().join("../.venv/lib");
    let dirs = std::fs::read_dir(&lib).unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", lib.display()));
    let path: PathBuf = dirs
        .map(|d| d.unwrap().path().join("site-packages/skimage/data").join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("scikit-image's {name} is missing; run scripts/setup"));
    std::fs::read(path).unwrap()
}

async fn classify(
    node: &mlbridge_node::server::RunningNode,
    model: &str,
    body: reqwest::Body,
    kind: &str,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url(node, &format!("/v2/models/{model}/classify?top_k=3")))
        .header("content-type", kind)
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn top(answer: &Value) -> (u64, String) {
    let c = &answer["classes"][0];
    (c["index"].as_u64().unwrap(), c["label"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_are_classified_over_http_as_sent_raw_base64_or_as_a_kserve_tensor() {
    let repo = repo_with(&[("mobilenet-v2", 1), ("efficientnet-lite0", 1)], str::to_owned);
    let node = start_node(|c| c.model_repository = repo.path().to_owned()).await;
    let (cat, coffee) = (photo("chelsea.png"), photo("coffee.png"));
    for model in ["mobilenet-v2", "efficientnet-lite0"] {
        // A tabby cat: one of ImageNet's domestic cats (tabby, tiger cat, Egyptian cat) comes first.
        let (status, answer) = classify(&node, model, cat.clone().into(), "image/png").await;
        assert_eq!(status, 200, "{answer}");
        let (index, label) = top(&answer);
        assert!([281, 282, 285].contains(&index), "{model} took the cat for {label} ({index}): {answer}");
        let classes = answer["classes"].as_array().unwrap();
        assert_eq!(classes.len(), 3);
        let scores: Vec<f64> = classes.iter().map(|c| c["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores.iter().sum::<f64>() <= 1.0 + 1e-6, "{scores:?}");
        // A cup of coffee: espresso.
        let (_, answer) = classify(&node, model, coffee.clone().into(), "application/octet-stream").await;
        assert_eq!(top(&answer), (967, "espresso".to_owned()), "{model}: {answer}");
    }
    // A JPEG: a rocket on its launch pad is a missile, a projectile or a space shuttle.
    let (status, answer) = classify(&node, "mobilenet-v2", photo("rocket.jpg").into(), "image/jpeg").await;
    assert_eq!(status, 200, "{answer}");
    let picked: Vec<u64> = answer["classes"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert!(picked.iter().any(|i| [657, 744, 812].contains(i)), "{answer}");
    // The JSON form (base64) gives the same answer as the raw bytes.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&cat);
    let (status, via_json) =
        post(&node, "/v2/models/mobilenet-v2/classify", &json!({ "image": b64, "top_k": 3 })).await;
    assert_eq!(status, 200, "{via_json}");
    let (_, raw) = classify(&node, "mobilenet-v2", cat.clone().into(), "image/png").await;
    assert_eq!(via_json["classes"], raw["classes"]);
    // The same job as a KServe request: one UINT8 input `image` [1, n] holding the file; the probabilities are the
    // classify endpoint's scores.
    let body = json!({ "inputs": [{ "name": "image", "datatype": "UINT8", "shape": [1, cat.len()], "data": cat }] });
    let (status, kserve) = post(&node, "/v2/models/mobilenet-v2/infer", &body).await;
    assert_eq!(status, 200, "{kserve}");
    let probs: Vec<f64> =
        kserve["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(probs.len(), 1000);
    for c in raw["classes"].as_array().unwrap() {
        let i = c["index"].as_u64().unwrap() as usize;
        assert!((probs[i] - c["score"].as_f64().unwrap()).abs() < 1e-6);
    }
    // Over libp2p through the SDK: the same probabilities, the classes named by the node.
    let c = crate::paid::client(&node, mlbridge_sdk::client::Strategy::LeastOutstanding).await;
    c.wait_for_nodes("mobilenet-v2", 1, std::time::Duration::from_secs(20)).await.unwrap();
    let out = c.classify("mobilenet-v2", None, cat.clone()).await.unwrap();
    let classes = out.top_classes(3);
    assert_eq!(serde_json::to_value(&classes).unwrap(), raw["classes"], "the same classes as over HTTP");
    assert!(classes.iter().all(|c| !c.label.is_empty()), "{classes:?}");
    // Each image was decoded and resized once per model, however many times and ways it came.
    let classifier = node.engine.classifier("mobilenet-v2", Some(1)).await.unwrap();
    assert_eq!(classifier.cached_images(), 3, "the cat, the coffee and the rocket");
    node.shutdown.cancel();
    node.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_images_get_a_clear_400_and_never_a_5xx() {
    let repo = repo_with(&[("mobilenet-v2", 1), ("minilm-l6", 1)], str::to_owned);
    let node = start_node(|c| c.model_repository = repo.path().to_owned()).await;
    let cat = photo("chelsea.png");
    // Valid PNGs past the bounds: wider than max_side (8,192), and long and thin (its shorter side resized to 256
    // would make it 256 x 524,288 before the crop). Refused from their headers.
    let png = |w: u32, h: u32| {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(w, h).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text", b"definitely not an image".to_vec(), "image/png"),
        ("truncated", cat[..cat.len() / 3].to_vec(), "image/png"),
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), "image/png"),
        ("too wide", png(9_000, 1), "image/png"),
        ("long and thin", png(2, 4_096), "image/png"),
        ("empty", Vec::new(), "image/png"),
    ];
    for (what, bytes, kind) in cases {
        let (status, answer) = classify(&node, "mobilenet-v2", bytes.into(), kind).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {answer}");
    }
    // A text, a form, a model that is no image classifier, a top_k beyond the classes.
    let (status, _) = classify(&node, "mobilenet-v2", cat.clone().into(), "text/plain").await;
    assert_eq!(status, 415);
    let (status, answer) = classify(&node, "minilm-l6", cat.clone().into(), "image/png").await;
    assert_eq!(status, 400, "{answer}");
    let resp = reqwest::Client::new()
        .post(url(&node, "/v2/models/mobilenet-v2/classify?top_k=1001"))
        .body(cat.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // An `image` tensor of the wrong type or shape, over KServe.
    let floats = json!({ "inputs": [{ "name": "image", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 1.0] }] });
    let (status, answer) = post(&node, "/v2/models/mobilenet-v2/infer", &floats).await;
    assert_eq!(status, 400, "{answer}");
    node.shutdown.cancel();
    node.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_image_is_one_unit_and_its_receipt_hashes_the_image_as_sent() {
    let chain = Chain::start().await;
    let ledger = tempfile::tempdir().unwrap();
    let repo = repo_with(&[("mobilenet-v2", 1)], str::to_owned);
    let node = start_node(|c| {
        paid(c, &chain, &chain.url(), 1, ledger.path());
        c.model_repository = repo.path().to_owned();
    })
    .await;
    let key = chain.key(4);
    let ch = open_raw(&chain, 4, chain.key(1).address(), ETHER / 1000).await;
    wait_confirmed(&node, ch).await;
    let price = u128::from(node.engine.config("mobilenet-v2", Some(1)).unwrap().price_wei);
    let cat = photo("chelsea.png");
    let send = |amount: u128| {
        reqwest::Client::new()
            .post(url(&node, "/v2/models/mobilenet-v2/classify"))
            .header("content-type", "image/png")
            .header("x-mlbridge-voucher", mlbridge_node::api::pay::voucher_header(&voucher(&key, &chain, ch, amount)))
            .body(cat.clone())
            .send()
    };
    assert_eq!(send(price - 1).await.unwrap().status().as_u16(), 402, "a voucher for less than one image");
    let resp = send(price).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let answer: Value = resp.json().await.unwrap();
    let receipt = &answer["receipt"];
    assert_eq!(receipt["units"], "1");
    assert_eq!(receipt["price"], price.to_string());
    let sent = tensors_hash(&[mlbridge_node::inference::image::image_tensor(cat.clone())]);
    assert_eq!(receipt["input_hash"], sent.to_string(), "{receipt}");
    let gate = node.payments.as_ref().unwrap().gate();
    let charged = gate.entries().unwrap().into_iter().find(|e| e.channel_id == ch).unwrap().charged;
    assert_eq!(charged, U256::from(price));
    node.shutdown.cancel();
    node.join().await;
}
