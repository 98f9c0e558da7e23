"""The node against the standard clients people already use, unchanged: tritonclient[http] and openai.

Run by scripts/test with the clients' own venv (.venv-clients): starts `mlbridge-node serve` (HTTP only, free, on
free 127.0.0.1 ports), then checks what a new user would do with each client. Exits non-zero on the first failure.
Usage: clients_test.py NODE_BINARY MODEL_REPOSITORY
"""

import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(binary: str, models: str) -> tuple[subprocess.Popen, str, str]:
    http, metrics = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="clients-node-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        # Result cache off: every comparison below is between two real runs, not an answer and its cached copy.
        [binary, "serve", "--model-repository", models, "--no-p2p", "--no-cache",
         "--http-listen", f"127.0.0.1:{http}", "--metrics-listen", f"127.0.0.1:{metrics}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{http}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the node exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(base + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, base, log.name
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"the node did not become ready in 120 s; see {log.name}")


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)
    print(f"    ok  {what}")


def mlp_input(batch: int, seed: float) -> np.ndarray:
    return (seed + (np.arange(batch * 256) % 97) / 97.0).astype(np.float32).reshape(batch, 256)


def triton_checks(base: str) -> None:
    client = triton.InferenceServerClient(url=base.removeprefix("http://"))
    check(client.is_server_live() and client.is_server_ready(), "tritonclient: server live and ready")
    meta = client.get_server_metadata()
    check(meta["name"] == "mlbridge-node", "tritonclient: server metadata")
    model = client.get_model_metadata("mlp-tiny")
    check(model["inputs"][0]["name"] == "input" and client.is_model_ready("mlp-tiny"), "tritonclient: model metadata")

    # JSON inference exactly as the client sends it (no Content-Type header).
    x = mlp_input(2, 0.25)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    out = triton.InferRequestedOutput("logits", binary_data=False)
    result = client.infer("mlp-tiny", [inp], outputs=[out])
    logits = result.as_numpy("logits")
    check(logits is not None and logits.shape == (2, 10) and np.isfinite(logits).all(),
          "tritonclient: JSON inference, shape [2, 10]")
    # The same request again and a pinned version agree with each other.
    again = client.infer("mlp-tiny", [inp], outputs=[out], model_version="2").as_numpy("logits")
    check(np.array_equal(logits, again), "tritonclient: the pinned latest version answers the same")

    # Binary tensors (the binary_tensor_data extension) both ways, equal to the JSON answer bit for bit.
    check("binary_tensor_data" in meta["extensions"], "tritonclient: the node lists binary_tensor_data")
    binp = triton.InferInput("input", list(x.shape), "FP32")
    binp.set_data_from_numpy(x, binary_data=True)
    bout = triton.InferRequestedOutput("logits", binary_data=True)
    binary = client.infer("mlp-tiny", [binp], outputs=[bout]).as_numpy("logits")
    check(binary is not None and np.array_equal(binary, logits), "tritonclient: binary inference equals JSON")
    image = np.random.default_rng(7).random((1, 3, 224, 224), dtype=np.float32)
    img = triton.InferInput("x", list(image.shape), "FP32")
    img.set_data_from_numpy(image, binary_data=True)
    probs = client.infer("orientation", [img]).as_numpy("fetch_name_0")
    check(probs is not None and probs.shape == (1, 4) and abs(float(probs.sum()) - 1.0) < 1e-3,
          "tritonclient: a 1x3x224x224 image as binary, probabilities out")

    # A JPEG file as it is, one UINT8 row [1, n] sent as binary data: the image classifier decodes it (a rocket on
    # its launch pad: a drilling platform first, then missile and space shuttle). The photo is scikit-image's, from
    # the project's venv.
    photo = next(Path(__file__).resolve().parents[1].glob(".venv/lib/python3*/site-packages/skimage/data/rocket.jpg"))
    data = np.frombuffer(photo.read_bytes(), dtype=np.uint8).reshape(1, -1)
    jpeg = triton.InferInput("image", list(data.shape), "UINT8")
    jpeg.set_data_from_numpy(data, binary_data=True)
    out = triton.InferRequestedOutput("probabilities", binary_data=True)
    probs = client.infer("mobilenet-v2", [jpeg], outputs=[out]).as_numpy("probabilities")
    top3 = set(np.argsort(-probs[0])[:3].tolist()) if probs is not None and probs.shape == (1, 1000) else set()
    check(bool(top3 & {657, 744, 812}),
          "tritonclient: a JPEG file as binary UINT8, classified (a missile, projectile or space shuttle in the top 3)")

    # An error case: the client raises with the node's message.
    bad = triton.InferInput("nope", [1, 256], "FP32")
    bad.set_data_from_numpy(mlp_input(1, 0.0), binary_data=False)
    try:
        client.infer("mlp-tiny", [bad])
        check(False, "tritonclient: an unknown input is refused")
    except InferenceServerException as e:
        check("nope" in str(e), f"tritonclient: an unknown input is refused ({str(e)[:60]}...)")
    try:
        client.get_model_metadata("no-such-model")
        check(False, "tritonclient: an unknown model is refused")
    except InferenceServerException:
        check(True, "tritonclient: an unknown model is refused")


def openai_checks(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="not-needed")
    ids = [m.id for m in client.models.list()]
    check("minilm-l6" in ids and "minilm-l6:1" in ids, f"openai: models.list() ({len(ids)} models)")
    check(client.models.retrieve("minilm-l6").id == "minilm-l6", "openai: models.retrieve()")

    # The client's defaults: it asks for base64 and decodes it itself.
    texts = ["A man is eating food.", "A man is eating a piece of bread."]
    resp = client.embeddings.create(model="minilm-l6", input=texts)
    a, b = resp.data[0].embedding, resp.data[1].embedding
    check(len(a) == 384 and len(resp.data) == 2, "openai: embeddings.create() with the client's defaults")
    cos = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    check(abs(cos - 0.755) < 0.01, f"openai: the pair's cosine is all-MiniLM-L6-v2's 0.755 ({cos:.3f})")
    check(resp.usage.prompt_tokens > 0 and resp.usage.total_tokens == resp.usage.prompt_tokens, "openai: usage")
    floats = client.embeddings.create(model="minilm-l6", input=texts, encoding_format="float")
    check(floats.data[0].embedding == a, "openai: float and base64 answers are the same vectors")
    # Token ids of the first text in the model's vocabulary ([CLS] a man is eating food . [SEP]).
    by_ids = client.embeddings.create(model="minilm-l6", input=[[101, 1037, 2158, 2003, 5983, 2833, 1012, 102]])
    alone = client.embeddings.create(model="minilm-l6", input=texts[0])
    check(by_ids.data[0].embedding == alone.data[0].embedding, "openai: token ids embed as their text does")
    try:
        client.embeddings.create(model="minilm-l6", input="x", dimensions=128)
        check(False, "openai: dimensions the model cannot give are refused")
    except openai.BadRequestError:
        check(True, "openai: dimensions the model cannot give are refused (400)")


def openai_generation_checks(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="not-needed")
    ids = [m.id for m in client.models.list()]
    check("smollm2-135m" in ids, "openai: models.list() lists the chat model")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=24, temperature=0)
    text = whole.choices[0].message.content
    check("Paris" in text, f"openai: chat.completions.create() answers ({text!r})")
    check(whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens, "openai: chat usage")
    pieces, usage = [], None
    stream = client.chat.completions.create(
        model="smollm2-135m", messages=messages, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    check("".join(pieces) == text, "openai: the streamed chat answer is the whole one")
    check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens, "openai: streamed usage")
    a = client.completions.create(model="smollm2-135m", prompt="Water boils at", max_tokens=8, temperature=0.8, seed=7)
    b = client.completions.create(model="smollm2-135m", prompt="Water boils at", max_tokens=8, temperature=0.8, seed=7)
    check(a.choices[0].text == b.choices[0].text, "openai: completions.create() with a seed is reproducible")
    try:
        client.completions.create(model="smollm2-135m", prompt="x", max_tokens=100_000)
        check(False, "openai: a request beyond the context is refused")
    except openai.BadRequestError:
        check(True, "openai: a request beyond the context is refused (400)")


def main() -> None:
    binary, models = sys.argv[1], sys.argv[2]
    proc, base, log = start_node(binary, models)
    try:
        print(f"  node at {base} (log {log})")
        triton_checks(base)
        openai_checks(base)
        openai_generation_checks(base)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    os.unlink(log)
    print("  standard clients: all checks passed")


if __name__ == "__main__":
    main()
