//! The HTTP API of a real node: every endpoint, every bad-input class, batching, overload, caching, Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use mlbridge_node::api::{AppState, router};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::*;

#[tokio::test]
async fn every_endpoint_answers() {
    let node = start_node(|_| {}).await;
    assert_eq!(get(&node, "/v2/health/live").await, (200, json!({ "live": true })));
    let (s, ready) = get(&node, "/v2/health/ready").await;
    assert_eq!((s, &ready["ready"]), (200, &json!(true)));
    let (s, meta) = get(&node, "/v2").await;
    assert_eq!((s, meta["name"].as_str()), (200, Some("mlbridge-node")));

    let (s, m) = get(&node, "/v2/models/minilm-l6").await;
    assert_eq!(s, 200);
    assert_eq!(m["versions"], json!(["1", "2"]));
    assert_eq!(m["parameters"]["version"], "2", "latest version by default");
    assert_eq!(m["inputs"][0]["shape"], json!([-1, -1]));
    let (s, m1) = get(&node, "/v2/models/minilm-l6/versions/1").await;
    assert_eq!((s, m1["parameters"]["precision"].as_str()), (200, Some("fp32")));
    assert_eq!(get(&node, "/v2/models/mlp-tiny/ready").await.0, 200);
    assert_eq!(get(&node, "/v2/models/mlp-tiny/versions/1/ready").await.0, 200);

    let (s, out) = post(&node, "/v2/models/mlp-tiny/infer", &mlp_request(2, 0.0)).await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["model_version"], "2");
    assert_eq!(out["outputs"][0]["shape"], json!([2, 10]));
    assert_eq!(out["outputs"][0]["data"].as_array().unwrap().len(), 20);
    // Nested data is accepted too, and the pinned version answers.
    let nested = json!({ "id": "req-7", "inputs": [{ "name": "input", "shape": [1, 256], "datatype": "FP32",
        "data": [vec![0.25f32; 256]] }], "outputs": [{ "name": "logits" }] });
    let (s, out) = post(&node, "/v2/models/mlp-tiny/versions/1/infer", &nested).await;
    assert_eq!((s, out["model_version"].as_str(), out["id"].as_str()), (200, Some("1"), Some("req-7")));

    let (s, emb) = post(
        &node,
        "/v1/embeddings",
        &json!({ "model": "minilm-l6", "input": ["A man is eating food.", "A man is eating a piece of bread."] }),
    )
    .await;
    assert_eq!(s, 200, "{emb}");
    let a: Vec<f64> = serde_json::from_value(emb["data"][0]["embedding"].clone()).unwrap();
    let b: Vec<f64> = serde_json::from_value(emb["data"][1]["embedding"].clone()).unwrap();
    assert_eq!(a.len(), 384);
    let cos: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!((cos - 0.755).abs() < 0.01, "all-MiniLM-L6-v2 gives 0.755 for this pair; got {cos}");
    assert_eq!(emb["usage"]["prompt_tokens"], 19);
    let (s, one) =
        post(&node, "/v1/embeddings", &json!({ "model": "minilm-l6:1", "input": "A man is eating food." })).await;
    assert_eq!((s, one["model"].as_str()), (200, Some("minilm-l6/1")));

    let text = metrics_text(&node).await;
    for name in [
        "mlbridge_requests_total",
        "mlbridge_request_seconds_bucket",
        "mlbridge_queue_wait_seconds_bucket",
        "mlbridge_compute_seconds_bucket",
        "mlbridge_queue_depth",
        "mlbridge_batch_size_bucket",
        "mlbridge_inferences_total",
        "mlbridge_executions_total",
        "mlbridge_cache_misses_total",
        "mlbridge_model_load_seconds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
    node.shutdown.cancel();
    node.join().await;
}

#[tokio::test]
async fn bad_input_gets_a_4xx_that_names_the_problem() {
    let node = start_node(|c| c.http.max_body_bytes = 64 * 1024).await;
    let tensor = |name: &str, shape: Value, dt: &str, data: Value| json!({ "inputs": [{ "name": name, "shape": shape, "datatype": dt, "data": data }] });
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v2/models/nope/infer", mlp_request(1, 0.0), 404, "unknown model"),
        ("/v2/models/mlp-tiny/versions/9/infer", mlp_request(1, 0.0), 404, "unknown model"),
        ("/v2/models/mlp-tiny/versions/x/infer", mlp_request(1, 0.0), 400, "not a number"),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("inputz", json!([1, 256]), "FP32", json!(vec![0.0; 256])),
            400,
            "no input named",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("input", json!([1, 256]), "INT64", json!(vec![0; 256])),
            400,
            "must be FP32",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("input", json!([1, 128]), "FP32", json!(vec![0.0; 128])),
            400,
            "must have shape",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("input", json!([1, 256]), "FP32", json!(vec![0.0; 255])),
            400,
            "needs 256 elements",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("input", json!([65, 256]), "FP32", json!(vec![0.0; 65 * 256])),
            413,
            "larger than",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("input", json!([1, 256]), "FP32", json!(vec!["a"; 256])),
            400,
            "not a number",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("input", json!([1, 256]), "FP16", json!(vec![0.0; 256])),
            400,
            "not supported",
        ),
        ("/v2/models/mlp-tiny/infer", json!({ "inputs": [] }), 400, "no inputs"),
        ("/v2/models/mlp-tiny/infer", json!({ "nothing": 1 }), 400, "inputs"),
        (
            "/v2/models/mlp-tiny/infer",
            json!({ "inputs": [{ "name": "input", "shape": [1, 256], "datatype": "FP32", "data": vec![0.0; 256] }], "outputs": [{ "name": "probs" }] }),
            400,
            "no output named",
        ),
        ("/v1/embeddings", json!({ "model": "mlp-tiny", "input": "hello" }), 400, "not a text-embedding model"),
        ("/v1/embeddings", json!({ "model": "minilm-l6", "input": [] }), 400, "at least one"),
        ("/v1/embeddings", json!({ "model": "minilm-l6", "input": "" }), 400, "at least one"),
        ("/v1/embeddings", json!({ "model": "minilm-l6", "input": 7 }), 400, "input"),
        (
            "/v2/models/mlp-tiny/infer",
            tensor("input", json!([1, 256]), "INT32", json!(vec![1i64 << 40; 256])),
            400,
            "not an INT32",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            json!({ "inputs": [{ "name": "input", "shape": [1, 256], "datatype": "FP32", "data": vec![0.0; 256] }],
                "outputs": [{ "name": "logits", "parameters": { "classification": 3 } }] }),
            400,
            "'classification' is not supported",
        ),
        (
            "/v2/models/mlp-tiny/infer",
            json!({ "inputs": [{ "name": "input", "shape": [1], "datatype": "FP32", "data": 0.5 }] }),
            400,
            "inputs[0].data",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (s, err) = post(&node, path, &body).await;
        let msg = err["error"].as_str().unwrap_or_default().to_owned();
        assert_eq!(s, status, "{path}: {msg}");
        assert!(msg.contains(needle), "{path}: expected '{needle}' in '{msg}'");
    }
    // A batch over the model's limit, within the body limit.
    let node2 = start_node(|_| {}).await;
    let (s, err) = post(&node2, "/v2/models/mlp-tiny/infer", &mlp_request(65, 0.0)).await;
    assert_eq!(s, 400);
    assert!(err["error"].as_str().unwrap().contains("batch size 65"), "{err}");
    // Malformed JSON.
    let resp = reqwest::Client::new()
        .post(url(&node, "/v2/models/mlp-tiny/infer"))
        .header("content-type", "application/json")
        .body("{\"inputs\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(get(&node, "/v3/whatever").await.0, 404);
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "mlbridge_requests_total{model=\"mlp-tiny/2\",outcome=\"error\"}"), 0.0, "no 5xx");
}

#[tokio::test]
async fn concurrent_requests_are_batched() {
    // A 20 ms batching window makes the batching visible regardless of scheduling.
    let repo = repo_with(&[("mlp-tiny", 1)], |c| {
        c.lines()
            .map(|l| if l.starts_with("max_queue_delay_us") { "max_queue_delay_us = 20000" } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let node = start_node(|c| {
        c.model_repository = repo.path().to_owned();
        c.cache.enabled = false;
    })
    .await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (client, u) = (client.clone(), url(&node, "/v2/models/mlp-tiny/infer"));
        tasks.push(tokio::spawn(async move {
            client.post(u).json(&mlp_request(1, i as f32)).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let text = metrics_text(&node).await;
    let inferences = metric(&text, "mlbridge_inferences_total{model=\"mlp-tiny/1\"}");
    let executions = metric(&text, "mlbridge_executions_total{model=\"mlp-tiny/1\"}");
    assert_eq!(inferences, 48.0);
    assert!(executions < 24.0, "48 concurrent requests ran in {executions} executions: not batched");
    // The batched answer for a sample equals running it alone.
    let (_, alone) = post(&node, "/v2/models/mlp-tiny/infer", &mlp_request(1, 3.0)).await;
    let (_, pair) = post(&node, "/v2/models/mlp-tiny/infer", &{
        let mut r = mlp_request(1, 3.0);
        let mut data: Vec<Value> = r["inputs"][0]["data"].as_array().unwrap().clone();
        data.extend(mlp_request(1, 9.0)["inputs"][0]["data"].as_array().unwrap().clone());
        r["inputs"][0]["data"] = json!(data);
        r["inputs"][0]["shape"] = json!([2, 256]);
        r
    })
    .await;
    assert_eq!(
        alone["outputs"][0]["data"].as_array().unwrap()[..],
        pair["outputs"][0]["data"].as_array().unwrap()[..10]
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let repo = repo_with(&[("minilm-l6", 1)], str::to_owned);
    let node = start_node(|c| {
        c.model_repository = repo.path().to_owned();
        c.inference.queue_capacity = 1;
        c.inference.batching = false;
        c.cache.enabled = false;
    })
    .await;
    // Each request is 32 sequences of 128 tokens on fp32 MiniLM: the worker is busy for a while per request.
    let ids: Vec<i64> = (0..32 * 128).map(|i| 1000 + (i % 5000) as i64).collect();
    let body = json!({ "inputs": [
        { "name": "input_ids", "shape": [32, 128], "datatype": "INT64", "data": ids },
        { "name": "attention_mask", "shape": [32, 128], "datatype": "INT64", "data": vec![1; 32 * 128] }
    ]});
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, u, body) = (client.clone(), url(&node, "/v2/models/minilm-l6/infer"), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.post(u).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let overloaded: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert!(ok >= 1, "{statuses:?}");
    assert!(!overloaded.is_empty(), "a queue of 1 must overflow under 8 concurrent heavy requests: {statuses:?}");
    assert!(overloaded.iter().all(|(_, ra)| ra.as_deref() == Some("1")), "Retry-After on every 503");
    assert_eq!(ok + overloaded.len(), 8, "only 200 or 503: {statuses:?}");
    let text = metrics_text(&node).await;
    assert_eq!(
        metric(&text, "mlbridge_requests_total{model=\"minilm-l6/1\",outcome=\"overloaded\"}"),
        overloaded.len() as f64
    );
}

#[tokio::test]
async fn repeated_requests_hit_the_cache() {
    let node = start_node(|_| {}).await;
    let req = mlp_request(1, 42.0);
    let (_, first) = post(&node, "/v2/models/mlp-tiny/infer", &req).await;
    let (_, second) = post(&node, "/v2/models/mlp-tiny/infer", &req).await;
    assert_eq!(first["parameters"]["cached"], false);
    assert_eq!(second["parameters"]["cached"], true);
    assert_eq!(first["outputs"], second["outputs"]);
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "mlbridge_cache_hits_total{model=\"mlp-tiny/2\"}"), 1.0);
    assert_eq!(metric(&text, "mlbridge_executions_total{model=\"mlp-tiny/2\"}"), 1.0, "the hit did not run the model");
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed by scripts/setup");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child, port)
}

/// Standard clients send JSON as they please: the Triton client with no `Content-Type`, others with a charset; the
/// OpenAI client asks for base64 embeddings and lists models. Only a body declared as something else is refused.
#[tokio::test]
async fn standard_clients_content_types_base64_embeddings_and_model_listing() {
    let node = start_node(|_| {}).await;
    let body = serde_json::to_vec(&mlp_request(1, 0.5)).unwrap();
    let raw = |content_type: Option<&'static str>, body: Vec<u8>| {
        let mut req = reqwest::Client::new().post(url(&node, "/v2/models/mlp-tiny/infer")).body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, first) = raw(None, body.clone()).await;
    assert_eq!(s, 200, "no Content-Type at all (the Triton client): {first}");
    for t in ["application/json; charset=utf-8", "application/octet-stream", "application/vnd.api+json"] {
        let (s, out) = raw(Some(t), body.clone()).await;
        assert_eq!((s, &out["outputs"]), (200, &first["outputs"]), "{t}");
    }
    for t in ["text/html", "text/plain", "application/x-www-form-urlencoded"] {
        let (s, e) = raw(Some(t), body.clone()).await;
        assert_eq!(s, 415, "{t}: {e}");
    }
    let cross_site = reqwest::Client::new()
        .post(url(&node, "/v2/models/mlp-tiny/infer"))
        .header("sec-fetch-site", "cross-site")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status().as_u16(), 403, "a page of another site makes the node do nothing");
    let mut trailing = body.clone();
    trailing.extend_from_slice(b" {}");
    let (s, e) = raw(None, trailing).await;
    assert_eq!(s, 400, "bytes after the JSON: {e}");
    let (s, e) = raw(None, b"input=1".to_vec()).await;
    assert_eq!(s, 400, "not JSON: {e}");
    assert!(e["error"].as_str().unwrap().contains("not a valid request"), "{e}");

    // Embeddings as base64 (little-endian f32) are the float answer, bit for bit.
    let ask = |extra: Value| {
        let mut req = json!({ "model": "minilm-l6", "input": ["A man is eating food.", "Bread."] });
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        req
    };
    let (s, floats) = post(&node, "/v1/embeddings", &ask(json!({}))).await;
    assert_eq!(s, 200, "{floats}");
    let (s, b64) = post(&node, "/v1/embeddings", &ask(json!({ "encoding_format": "base64", "dimensions": 384 }))).await;
    assert_eq!(s, 200, "{b64}");
    for i in 0..2 {
        use base64::Engine as _;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(b64["data"][i]["embedding"].as_str().unwrap()).unwrap();
        let decoded: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let float: Vec<f32> = serde_json::from_value(floats["data"][i]["embedding"].clone()).unwrap();
        assert_eq!(decoded, float);
    }
    assert_eq!(b64["usage"], floats["usage"]);
    let (s, e) = post(&node, "/v1/embeddings", &ask(json!({ "dimensions": 128 }))).await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("384-dimensional"), "{e}");
    let (s, _) = post(&node, "/v1/embeddings", &ask(json!({ "encoding_format": "int8" }))).await;
    assert_eq!(s, 400);

    // Token ids (the model's vocabulary, as its tokenizer gives them) embed to what their text does; one sequence
    // or several; ids beyond the vocabulary, empty or over-long sequences are 400s.
    let repo = mlbridge_node::inference::ModelRepository::open(&models_root()).unwrap();
    let config = repo.config("minilm-l6", None).unwrap();
    let encoder = mlbridge_node::inference::text::TextEncoder::load(
        &repo.version_dir(config),
        config.tokenizer.as_ref().unwrap(),
        "minilm-l6",
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = ["A man is eating food.", "Bread."].iter().map(|t| encoder.ids(t).unwrap()).collect();
    let (s, by_ids) = post(&node, "/v1/embeddings", &json!({ "model": "minilm-l6", "input": ids })).await;
    assert_eq!(s, 200, "{by_ids}");
    assert_eq!(by_ids["data"], floats["data"], "the same vectors as the texts'");
    assert_eq!(by_ids["usage"], floats["usage"]);
    let (s, one) = post(&node, "/v1/embeddings", &json!({ "model": "minilm-l6", "input": ids[1] })).await;
    let (_, text) = post(&node, "/v1/embeddings", &json!({ "model": "minilm-l6", "input": "Bread." })).await;
    assert_eq!((s, &one["data"]), (200, &text["data"]), "{one}");
    for (bad, why) in [
        (json!([101, 999_999, 102]), "outside"),
        (json!([[101, 102], []]), "no input"),
        (json!(vec![101; 10_000]), "tokens"),
        (json!([101, "x"]), "not a valid request"),
    ] {
        let (s, e) = post(&node, "/v1/embeddings", &json!({ "model": "minilm-l6", "input": bad })).await;
        assert_eq!(s, 400, "{e}");
        assert!(e["error"].as_str().unwrap().contains(why), "{why}: {e}");
    }

    // Models in OpenAI's shape, by name (latest) and by name:version.
    let (s, list) = get(&node, "/v1/models").await;
    assert_eq!((s, list["object"].as_str()), (200, Some("list")));
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    for id in ["minilm-l6", "minilm-l6:1", "minilm-l6:2", "mlp-tiny", "orientation:1"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    assert!(list["data"].as_array().unwrap().iter().all(|m| m["object"] == "model" && m["created"].is_u64()));
    let (s, m) = get(&node, "/v1/models/minilm-l6:1").await;
    assert_eq!((s, m["id"].as_str(), m["version"].as_u64()), (200, Some("minilm-l6:1"), Some(1)));
    assert_eq!(get(&node, "/v1/models/minilm-l6").await.1["version"], 2);
    assert_eq!(get(&node, "/v1/models/no-such-model").await.0, 404);
}

/// The binary tensor data extension: a JSON header of `Inference-Header-Content-Length` bytes, then raw tensors;
/// JSON and binary inputs mixed in one request; binary outputs on request; bad lengths refused with a 400.
#[tokio::test]
async fn binary_tensors_in_and_out_mixed_with_json() {
    let node = start_node(|_| {}).await;
    let send = |path: &'static str, header: Value, binary: Vec<u8>, declared: Option<usize>| {
        let json = serde_json::to_vec(&header).unwrap();
        let len = declared.unwrap_or(json.len());
        let mut body = json;
        body.extend_from_slice(&binary);
        let req = reqwest::Client::new()
            .post(url(&node, path))
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", len.to_string())
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let json_len: Option<usize> =
                resp.headers().get("inference-header-content-length").map(|v| v.to_str().unwrap().parse().unwrap());
            (status, json_len, resp.bytes().await.unwrap().to_vec())
        }
    };
    // MiniLM: token ids as binary INT64, the attention mask as JSON, in one request; the embedding comes back binary.
    let ids: Vec<i64> = vec![101, 1037, 2158, 2003, 5983, 2833, 1012, 102];
    let id_bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({
        "inputs": [
            { "name": "input_ids", "shape": [1, 8], "datatype": "INT64", "parameters": { "binary_data_size": 64 } },
            { "name": "attention_mask", "shape": [1, 8], "datatype": "INT64", "data": vec![1; 8] }
        ],
        "outputs": [{ "name": "sentence_embedding", "parameters": { "binary_data": true } }]
    });
    let (s, json_len, body) = send("/v2/models/minilm-l6/infer", header, id_bytes, None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let json_len = json_len.expect("a binary answer says its JSON length");
    let answer: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    assert_eq!(answer["outputs"][0]["parameters"]["binary_data_size"], 384 * 4);
    assert!(answer["outputs"][0].get("data").is_none());
    let binary: Vec<f32> = body[json_len..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let all_json = json!({ "inputs": [
        { "name": "input_ids", "shape": [1, 8], "datatype": "INT64", "data": ids },
        { "name": "attention_mask", "shape": [1, 8], "datatype": "INT64", "data": vec![1; 8] }
    ] });
    let (s, plain) = post(&node, "/v2/models/minilm-l6/infer", &all_json).await;
    assert_eq!(s, 200);
    let expected: Vec<f32> = serde_json::from_value(plain["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(binary, expected, "binary in and out is the JSON answer, bit for bit");

    // Bad framing: a size past the end, bytes nobody claims, a header length beyond the body, half an element.
    let mlp = |size: usize| {
        json!({ "inputs": [{ "name": "input", "shape": [1, 256], "datatype": "FP32",
        "parameters": { "binary_data_size": size } }] })
    };
    let floats = vec![0u8; 1024];
    let cases = [
        (mlp(2048), floats.clone(), None, "runs past the end"),
        (mlp(1022), floats.clone(), None, "whole number"),
        (mlp(1024), vec![0u8; 1030], None, "add up to"),
        (mlp(1024), floats.clone(), Some(1 << 20), "Inference-Header-Content-Length"),
    ];
    for (header, binary, declared, needle) in cases {
        let (s, _, body) = send("/v2/models/mlp-tiny/infer", header, binary, declared).await;
        let e: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(s, 400, "{e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "expected '{needle}' in {e}");
    }
    let (s, _, body) = send("/v2/models/mlp-tiny/infer", mlp(1024), floats, None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));

    // JSON in, every output binary on the request's word (`binary_data_output`); an empty output list means all.
    let json_in = |extra: Value| {
        let mut req = mlp_request(1, 0.5);
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        req
    };
    let (s, plain) = post(&node, "/v2/models/mlp-tiny/infer", &json_in(json!({ "outputs": [] }))).await;
    assert_eq!((s, plain["outputs"].as_array().map(Vec::len)), (200, Some(1)), "{plain}");
    let resp = reqwest::Client::new()
        .post(url(&node, "/v2/models/mlp-tiny/infer"))
        .json(&json_in(json!({ "parameters": { "binary_data_output": true } })))
        .send()
        .await
        .unwrap();
    let json_len: usize = resp.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let body = resp.bytes().await.unwrap();
    let logits: Vec<f32> = body[json_len..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let expected: Vec<f32> = serde_json::from_value(plain["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(logits, expected);
}

#[tokio::test]
async fn redis_cache_is_shared_between_nodes() {
    let redis = start_redis();
    let redis_url = format!("redis://127.0.0.1:{}/0", redis.1);
    let a = start_node(|c| c.cache.redis_url = Some(redis_url.clone())).await;
    let b = start_node(|c| c.cache.redis_url = Some(redis_url.clone())).await;
    let req = mlp_request(2, 7.0);
    let (_, first) = post(&a, "/v2/models/mlp-tiny/infer", &req).await;
    assert_eq!(first["parameters"]["cached"], false);
    // Another node of the fleet answers from Redis without running the model.
    let (_, second) = post(&b, "/v2/models/mlp-tiny/infer", &req).await;
    assert_eq!(second["parameters"]["cached"], true);
    assert_eq!(first["outputs"], second["outputs"]);
    let text = metrics_text(&b).await;
    assert_eq!(metric(&text, "mlbridge_executions_total{model=\"mlp-tiny/2\"}"), 0.0);
    // Redis going away is a miss, not an error.
    drop(redis); // killed and reaped
    let (s, third) = post(&b, "/v2/models/mlp-tiny/infer", &mlp_request(1, 1.5)).await;
    assert_eq!((s, &third["parameters"]["cached"]), (200, &json!(false)));
}

fn random_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        "[ -~]{0,300}".prop_map(String::into_bytes),
        (
            any::<bool>(),
            prop::collection::vec(-1i64..300, 0..4),
            prop::collection::vec(any::<f32>(), 0..300),
            "[A-Z0-9]{0,6}"
        )
            .prop_map(|(named, shape, data, dt)| {
                let name = if named { "input" } else { "x" };
                serde_json::to_vec(
                    &json!({ "inputs": [{ "name": name, "shape": shape, "datatype": dt, "data": data }] }),
                )
                .unwrap()
            }),
        // MiniLM-shaped requests (the right names and types): token ids anywhere in i64, lengths around the limit,
        // masks that disagree with the ids, so the checks behind the names are reached too.
        (1i64..3, 1i64..300, prop::collection::vec(any::<i64>(), 0..8), prop::bool::ANY).prop_map(
            |(batch, len, seeds, mask_ok)| {
                let n = (batch * len) as usize;
                let ids: Vec<i64> = (0..n).map(|i| seeds.get(i % seeds.len().max(1)).copied().unwrap_or(101)).collect();
                let mask: Vec<i64> = (0..n).map(|i| if mask_ok { 1 } else { (i % 3) as i64 - 1 }).collect();
                let mask_len = if mask_ok { len } else { len.max(2) - 1 };
                serde_json::to_vec(&json!({ "inputs": [
                    { "name": "input_ids", "shape": [batch, len], "datatype": "INT64", "data": ids },
                    { "name": "attention_mask", "shape": [batch, mask_len], "datatype": "INT64",
                      "data": mask.iter().take((batch * mask_len) as usize).collect::<Vec<_>>() },
                ]}))
                .unwrap()
            }
        ),
    ]
}

#[test]
fn random_bodies_never_cause_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = rt.block_on(start_node(|c| c.cache.enabled = false));
    let limits = mlbridge_node::api::Limits {
        max_body_bytes: 1 << 20,
        request_timeout: std::time::Duration::from_secs(30),
        max_concurrent: 64,
    };
    let app = router(
        AppState { engine: node.engine.clone(), payments: None, admin_token: None, request_timeout: None },
        limits,
    );
    let paths =
        ["/v2/models/mlp-tiny/infer", "/v2/models/orientation/infer", "/v1/embeddings", "/v2/models/minilm-l6/infer"];
    let reached_minilm = std::sync::atomic::AtomicUsize::new(0);
    proptest!(ProptestConfig::with_cases(300), |(body in random_body(), p in 0usize..4)| {
        let minilm_shaped = body.windows(9).any(|w| w == b"input_ids");
        // Half the MiniLM-shaped bodies go to MiniLM (enough of them reach it whatever the seed); the rest elsewhere.
        let p = if minilm_shaped && p >= 2 { 3 } else { p };
        let status = rt.block_on(async {
            let req = Request::post(paths[p]).header("content-type", "application/json").body(Body::from(body)).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let _ = resp.into_body().collect().await.unwrap();
            status
        });
        prop_assert!(status.as_u16() < 500, "{} answered {status}", paths[p]);
        if p == 3 && minilm_shaped {
            reached_minilm.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    assert!(reached_minilm.into_inner() > 10, "MiniLM-shaped bodies reached MiniLM");
}

#[tokio::test]
async fn a_request_past_its_queue_timeout_is_not_run() {
    let repo = repo_with(&[("minilm-l6", 1)], str::to_owned);
    let node = start_node(|c| {
        c.model_repository = repo.path().to_owned();
        c.inference.batching = false;
        c.cache.enabled = false;
        c.p2p.enabled = false;
    })
    .await;
    let heavy = {
        let ids: Vec<i64> = (0..32 * 128).map(|i| 1000 + (i % 5000) as i64).collect();
        vec![
            mlbridge_sdk::Tensor::new("input_ids", vec![32, 128], mlbridge_sdk::TensorData::Int64(ids)).unwrap(),
            mlbridge_sdk::Tensor::new(
                "attention_mask",
                vec![32, 128],
                mlbridge_sdk::TensorData::Int64(vec![1; 32 * 128]),
            )
            .unwrap(),
        ]
    };
    let small = vec![
        mlbridge_sdk::Tensor::new("input_ids", vec![1, 4], mlbridge_sdk::TensorData::Int64(vec![101, 7592, 2088, 102]))
            .unwrap(),
        mlbridge_sdk::Tensor::new("attention_mask", vec![1, 4], mlbridge_sdk::TensorData::Int64(vec![1; 4])).unwrap(),
    ];
    let engine = node.engine.clone();
    let busy = tokio::spawn(async move { engine.infer("minilm-l6", Some(1), heavy).await });
    // The worker is computing the heavy request now.
    wait_metric(&node, "mlbridge_running_samples{model=\"minilm-l6/1\"}", Duration::from_secs(20), |v| v == 32.0).await;
    let err = node
        .engine
        .infer_within("minilm-l6", Some(1), small.clone(), Some(Duration::from_millis(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, mlbridge_node::Error::QueueTimeout { .. }), "{err}");
    busy.await.unwrap().unwrap();
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "mlbridge_inferences_total{model=\"minilm-l6/1\"}"), 32.0, "the late request never ran");
    // Without a deadline the same request runs.
    assert!(node.engine.infer_within("minilm-l6", Some(1), small, None).await.is_ok());
}

/// A client that sends its body too slowly is cut off (408), and beyond `max_concurrent_requests` in service new
/// requests are refused at once (503 + Retry-After) instead of piling up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out_and_excess_requests_are_shed() {
    let node = start_node(|c| {
        c.http.request_timeout_secs = 3.0;
        c.http.max_concurrent_requests = 2;
    })
    .await;
    let endpoint = format!("http://{}/v2/models/mlp-tiny/infer", node.http_addr);
    // Slow clients: headers announce a body that never comes.
    let slow_client = |addr: std::net::SocketAddr| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = "POST /v2/models/mlp-tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Content-Length: 100\r\n\r\n{";
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let http = reqwest::Client::new();
    let mut slow: Vec<_> = (0..2).map(|_| tokio::spawn(slow_client(node.http_addr))).collect();
    // Both slots are taken by the slow uploads: the next request is shed at once. A probe that races a slow client
    // to a free slot sheds that slow client instead; it is replaced until both hold a slot.
    let mut shed = None;
    for _ in 0..100 {
        for s in slow.iter_mut() {
            if s.is_finished() {
                let answer = (&mut *s).await.unwrap();
                assert!(answer.starts_with("HTTP/1.1 503"), "a slow upload ended early: {answer}");
                *s = tokio::spawn(slow_client(node.http_addr));
            }
        }
        let resp = http.post(&endpoint).json(&mlp_request(1, 0.5)).send().await.unwrap();
        if resp.status().as_u16() == 503 {
            shed = Some(resp);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let shed = shed.expect("a request beyond the limit is refused");
    assert_eq!(shed.headers().get("retry-after").unwrap(), "1");
    let slow_started = std::time::Instant::now();
    for s in slow {
        let answer = s.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "a body still not sent after the timeout: {answer}");
    }
    assert!(slow_started.elapsed() < std::time::Duration::from_secs(5), "cut off at the timeout, not later");
    // Once they are gone the node serves again.
    let ok = http.post(&endpoint).json(&mlp_request(1, 0.5)).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

fn minilm_request(ids: &[i64]) -> serde_json::Value {
    let n = ids.len();
    serde_json::json!({ "inputs": [
        { "name": "input_ids", "shape": [1, n], "datatype": "INT64", "data": ids },
        { "name": "attention_mask", "shape": [1, n], "datatype": "INT64", "data": vec![1; n] },
    ]})
}

/// A token id beyond the vocabulary or a sequence over the model's length is refused with a 4xx naming it, before
/// it reaches a batch; and if a bad request gets through anyway (a config without ranges), only it fails, not the
/// requests batched with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ids_and_lengths_are_checked_and_a_bad_request_fails_alone() {
    let node = start_node(|_| {}).await;
    let path = "/v2/models/minilm-l6/versions/2/infer";
    let (status, body) = post(&node, path, &minilm_request(&[101, 99_999, 102])).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("99999"), "{body}");
    let (status, body) = post(&node, path, &minilm_request(&vec![1000; 257])).await;
    assert_eq!(status, 400, "257 tokens: {body}");
    assert_eq!(post(&node, path, &minilm_request(&[101, 2000, 102])).await.0, 200);

    // Without the ranges in config.toml, the bad id reaches ONNX Runtime inside a batch of good requests.
    // A 50 ms gathering window puts the concurrent requests in one batch.
    let repo = repo_with(&[("minilm-l6", 2)], |c| {
        c.replace("range = [0, 30521]", "")
            .replace("range = [0, 1]", "")
            .replace("max_queue_delay_us = 0", "max_queue_delay_us = 50000")
    });
    let loose = start_node(|c| c.model_repository = repo.path().to_owned()).await;
    for _ in 0..3 {
        let bad_body = minilm_request(&[101, 99_999, 102]);
        let good_bodies: Vec<Value> = (0..6).map(|i| minilm_request(&[101, 2000 + i, 102])).collect();
        let bad = post(&loose, path, &bad_body);
        let goods: Vec<_> = good_bodies.iter().map(|b| post(&loose, path, b)).collect();
        let (bad, goods) = tokio::join!(bad, futures::future::join_all(goods));
        assert_eq!(bad.0, 500, "the bad request fails: {}", bad.1);
        for (status, body) in goods {
            assert_eq!(status, 200, "a good request batched with a bad one still succeeds: {body}");
        }
    }
    let text = metrics_text(&loose).await;
    let (execs, infs) = (
        metric(&text, "mlbridge_executions_total{model=\"minilm-l6/2\"}"),
        metric(&text, "mlbridge_inferences_total{model=\"minilm-l6/2\"}"),
    );
    assert!(execs > 3.0 && infs > execs, "batches formed ({infs} inferences in {execs} executions) and were re-run");
}

/// Token ids and their mask must have the same shape: a shorter mask would run one way padded in a batch and another
/// alone (a receipt a validator could not reproduce).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_mask_of_different_lengths_are_refused() {
    let node = start_node(|_| {}).await;
    let body = serde_json::json!({ "inputs": [
        { "name": "input_ids", "shape": [1, 5], "datatype": "INT64", "data": [101, 2000, 2001, 2002, 102] },
        { "name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1] },
    ]});
    let (status, body) = post(&node, "/v2/models/minilm-l6/versions/2/infer", &body).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("attention_mask"), "{body}");
}

/// `mlbridge-node doctor` on a running node finds nothing wrong; on a snapshot showing problems it names them and
/// exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reads_a_live_node_and_a_snapshot() {
    // HTTP only: a lone node on the p2p network would rightly be told it has no peers.
    let node = start_node(|c| c.p2p.enabled = false).await;
    for i in 0..20 {
        assert_eq!(post(&node, "/v2/models/mlp-tiny/infer", &mlp_request(1, i as f32)).await.0, 200);
    }
    let url = format!("http://{}/metrics", node.metrics_addr);
    let doctor = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_mlbridge-node")).args(args).output().unwrap()
        })
    };
    let live =
        doctor(vec!["doctor".into(), "--metrics-url".into(), url, "--interval".into(), "0.5".into()]).await.unwrap();
    let report = String::from_utf8_lossy(&live.stdout);
    assert!(
        live.status.success() && report.contains("No problems found"),
        "{report}{}",
        String::from_utf8_lossy(&live.stderr)
    );

    let snapshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doctor/settlement.prom");
    let saved = doctor(vec!["doctor".into(), "--snapshot".into(), snapshot.display().to_string()]).await.unwrap();
    let report = String::from_utf8_lossy(&saved.stdout);
    assert!(!saved.status.success(), "problems found: non-zero exit");
    for symptom in ["[payments_refused]", "[settlement_stuck]", "[no_peers]", "likely cause:", "fix:"] {
        assert!(report.contains(symptom), "{symptom} in {report}");
    }
}
