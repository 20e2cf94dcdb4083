"""emotrain-serve against a live server on 127.0.0.1, with a real HTTP client (http.client), torch and transformers
imports blocked in the server process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_inference import exported_bundle, trained_run  # noqa: E402, F401  (shared, trained once per session)

from conftest import subprocess_env  # noqa: E402

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked: the server must not import it")
        return None
sys.meta_path.insert(0, _Block())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None, timeout=30):
    """(status, parsed JSON or text, headers) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    kind = response.getheader("content-type") or ""
    return response.status, json.loads(payload) if "json" in kind else payload.decode(), dict(response.getheaders())


class Server:
    def __init__(self, bundle: Path, tmp: Path, *extra: str):
        (tmp / "block").mkdir(exist_ok=True)
        (tmp / "block" / "sitecustomize.py").write_text(BLOCK_TORCH)
        self.port = free_port()
        env = subprocess_env(PYTHONPATH=str(tmp / "block"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emotrain.inference.serve", "--model", str(bundle), "--port", str(self.port)]
            + ["--threads", "1", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if call(self.port, "GET", "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then (exit status, stderr). A graceful stop ends in 0, or in the signal re-raised after the
        shutdown finished (uvicorn does that so a process manager sees it) with the "stopped" line logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        code = self.proc.returncode
        return (0 if code == -signal.SIGTERM and "emotrain-serve: info: stopped" in err else code), err


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return exported_bundle("goemotions", tmp_path_factory)


@pytest.fixture(scope="module")
def engine(bundle):
    from emotrain.inference import load_engine

    return load_engine(bundle, "onnx", num_threads=1)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    s = Server(bundle, tmp_path_factory.mktemp("serve"))
    yield s
    code, err = s.stop()
    assert code == 0, err


TEXTS = ["I love this so much!", "This is terrible and I am angry.", "", "ok", "Why would anyone do that?? " * 5]


def test_predictions_equal_the_engine(server, engine):
    status, body, _ = call(server.port, "POST", "/predict", {"texts": TEXTS})
    assert status == 200
    want = engine.predict_batch(TEXTS)
    assert [r["text"] for r in body["results"]] == TEXTS
    for got, expected in zip(body["results"], want):
        assert {k: v for k, v in got.items() if k != "text"}.keys() == expected.keys()
        for task, pred in expected["tasks"].items():
            assert got["tasks"][task]["labels"] == pred["labels"] and got["tasks"][task]["label"] == pred["label"]
            for label, score in pred["scores"].items():
                assert got["tasks"][task]["scores"][label] == pytest.approx(score, abs=1e-6)
        assert got["emotion"] == expected["emotion"]


def test_threshold_per_request(server, engine):
    status, body, _ = call(server.port, "POST", "/predict", {"texts": TEXTS[:2], "threshold": 0.02})
    assert status == 200
    want = engine.predict_batch(TEXTS[:2], threshold=0.02)
    assert [r["tasks"]["emotion"]["labels"] for r in body["results"]] == [w["tasks"]["emotion"]["labels"] for w in want]
    assert len(body["results"][0]["tasks"]["emotion"]["labels"]) > 1
    # The next request without a threshold is back to the tuned ones.
    again = call(server.port, "POST", "/predict", {"texts": TEXTS[:2]})[1]
    assert (
        again["results"][0]["tasks"]["emotion"]["labels"]
        == engine.predict_batch(TEXTS[:2])[0]["tasks"]["emotion"]["labels"]
    )


def test_long_text_is_cut_and_says_so(server):
    status, body, _ = call(server.port, "POST", "/predict", {"texts": ["so happy " * 3000, "short"]})
    assert status == 200
    assert [r["truncated"] for r in body["results"]] == [True, False]


def test_health_and_metadata(server, bundle):
    status, body, _ = call(server.port, "GET", "/health")
    assert (status, body["status"], body["quantized"]) == (200, "ready", False)
    status, meta, _ = call(server.port, "GET", "/metadata")
    bundle_meta = json.loads((bundle / "bundle.json").read_text())
    assert status == 200 and meta["file"] == "model.onnx"
    assert [t["name"] for t in meta["tasks"]] == [t["name"] for t in bundle_meta["tasks"]]
    assert meta["test"] == bundle_meta["test"] and meta["primary_task"] == "emotion"
    assert meta["card"].startswith("---\n") and "## How to load" in meta["card"]


BAD_REQUESTS = [
    (b"{not json", 400, "not valid JSON", None),
    (b"\xff\xfe", 400, "not UTF-8", None),
    (b'["a"]', 422, "must be a JSON object", None),
    (b"{}", 422, 'missing field "texts"', "texts"),
    (b'{"texts": "one text"}', 422, "must be a list of strings, got a string", "texts"),
    (b'{"texts": []}', 422, "is empty", "texts"),
    (b'{"texts": ["a", 3]}', 422, '"texts"[1] must be a string, got a number', "texts[1]"),
    (b'{"texts": ["a", null]}', 422, "got null", "texts[1]"),
    (b'{"texts": ["a"], "lang": "en"}', 422, "unknown field 'lang'", "lang"),
    (b'{"texts": ["a"], "threshold": 1.5}', 422, "between 0 and 1", "threshold"),
    (b'{"texts": ["a"], "threshold": NaN}', 422, "between 0 and 1", "threshold"),
    (b'{"texts": ["a"], "threshold": ' + b"9" * 5000 + b"}", 400, "not valid JSON", None),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON", None),
    (b'{"texts": ["a"], "threshold": "high"}', 422, "between 0 and 1", "threshold"),
    (json.dumps({"texts": ["a"] * 300}).encode(), 413, "300 items; at most 256", "texts"),
]


@pytest.mark.parametrize("raw,status,message,field", BAD_REQUESTS)
def test_bad_requests_get_json_errors(server, raw, status, message, field):
    got, body, _ = call(server.port, "POST", "/predict", raw=raw)
    assert got == status, body
    assert body["error"]["status"] == status and message in body["error"]["message"], body
    assert body["error"].get("field") == field
    assert call(server.port, "POST", "/predict", {"texts": ["still serving"]})[0] == 200


def test_edge_thresholds_and_unencodable_text(server, engine):
    # The engine's own range: 0 and 1 are thresholds like any other.
    for threshold in (0, 1):
        status, body, _ = call(server.port, "POST", "/predict", {"texts": TEXTS[:2], "threshold": threshold})
        want = engine.predict_batch(TEXTS[:2], threshold=threshold)
        assert status == 200 and [r["tasks"] for r in body["results"]] == [r["tasks"] for r in want]
    # A lone surrogate is valid JSON but not UTF-8: the text is echoed back escaped, not a 500.
    status, body, _ = call(server.port, "POST", "/predict", raw=b'{"texts": ["bad \\ud800 text", "fine"]}')
    assert status == 200 and body["results"][0]["text"] == "bad \ud800 text" and len(body["results"]) == 2


def test_oversized_body_wrong_method_and_path(server):
    status, body, _ = call(server.port, "POST", "/predict", raw=b'{"texts": ["' + b"x" * 2_100_000 + b'"]}')
    assert status == 413 and "bytes" in body["error"]["message"]
    status, body, _ = call(server.port, "GET", "/predict")
    assert status == 405 and body["error"]["message"] == "GET is not allowed on /predict"
    status, body, _ = call(server.port, "GET", "/nope")
    assert status == 404 and "POST /predict" in body["error"]["message"]


def test_concurrent_burst_is_micro_batched_without_errors(server, engine):
    texts = [f"text number {i}: {'happy' if i % 3 else 'sad and angry'} " + "word " * (i % 17) for i in range(160)]
    want = {t: r for t, r in zip(texts, engine.predict_batch(texts))}
    before = _metric(call(server.port, "GET", "/metrics")[1], "emotrain_batch_requests_count")

    def one(i: int):
        status, body, _ = call(server.port, "POST", "/predict", {"texts": [texts[i], texts[(i + 1) % len(texts)]]})
        return i, status, body

    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(one, range(len(texts))))
    assert [status for _, status, _ in outcomes] == [200] * len(texts)
    for i, _, body in outcomes:
        sent = [texts[i], texts[(i + 1) % len(texts)]]
        assert [r["text"] for r in body["results"]] == sent
        for r in body["results"]:
            assert r["tasks"]["emotion"]["labels"] == want[r["text"]]["tasks"]["emotion"]["labels"]
    metrics = call(server.port, "GET", "/metrics")[1]
    batches = _metric(metrics, "emotrain_batch_requests_count") - before
    assert 0 < batches < len(texts)  # requests shared engine batches
    assert 'emotrain_requests_total{endpoint="/predict",status="200"}' in metrics
    assert "emotrain_request_seconds_bucket" in metrics and "emotrain_batch_texts_bucket" in metrics


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def arriving_request(port: int) -> socket.socket:
    """A /predict request whose headers are sent and whose body is not: while it is "arriving", a forming batch
    waits (up to --max-wait-ms) for it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{")
    wait_for_requests_in_flight(port, 1)  # the server has read the headers and is waiting for the body
    return sock


def wait_for_requests_in_flight(port: int, n: int, timeout: float = 30.0) -> None:
    """Poll /metrics until `n` requests besides the poll itself are in flight. The event loop runs a request until
    it waits for I/O, so a request counted here is already waiting for its body or its batch; a fixed sleep instead
    would be too short on a slow or busy machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _metric(call(port, "GET", "/metrics")[1], "emotrain_requests_in_flight") >= n + 1:
            return
        time.sleep(0.02)
    raise AssertionError(f"{n} request(s) were not in flight within {timeout} s")


def test_a_lone_request_does_not_wait_for_a_batch(bundle, tmp_path):
    # A 3 s batch window: a lone request runs at once, a request next to one still arriving waits for it.
    server = Server(bundle, tmp_path, "--max-wait-ms", "3000")
    try:
        started = time.perf_counter()
        assert call(server.port, "POST", "/predict", {"texts": ["hello"]})[0] == 200
        assert time.perf_counter() - started < 1.5
        sock = arriving_request(server.port)
        started = time.perf_counter()
        assert call(server.port, "POST", "/predict", {"texts": ["hello"]})[0] == 200
        assert time.perf_counter() - started > 2.0
        sock.close()
    finally:
        assert server.stop()[0] == 0


def test_graceful_shutdown_finishes_requests_in_flight(bundle, tmp_path):
    # Batches wait up to 1.5 s to fill while another request arrives: the request is in flight when SIGTERM comes.
    server = Server(bundle, tmp_path, "--max-wait-ms", "1500")
    sock = arriving_request(server.port)
    result = {}

    def slow():
        result["response"] = call(server.port, "POST", "/predict", {"texts": TEXTS})

    thread = threading.Thread(target=slow)
    thread.start()
    wait_for_requests_in_flight(server.port, 2)  # the half-sent request and the one SIGTERM must let finish
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    sock.close()  # the half-sent request's client gives up
    code, err = server.stop()
    status, body, _ = result["response"]
    assert status == 200 and len(body["results"]) == len(TEXTS)
    assert code == 0, err
    assert "Traceback" not in err


def test_request_timeout_is_a_504(bundle, tmp_path):
    server = Server(bundle, tmp_path, "--max-wait-ms", "2000", "--timeout", "0.2")
    sock = arriving_request(server.port)
    try:
        status, body, _ = call(server.port, "POST", "/predict", {"texts": ["hello"]})
        assert status == 504 and "--timeout" in body["error"]["message"]
        assert call(server.port, "GET", "/health")[0] == 200
    finally:
        sock.close()
        assert server.stop()[0] == 0


def test_a_run_directory_with_its_bundle_is_served(bundle, tmp_path):
    # --model may name the run directory that holds bundle/ (as emotrain-predict accepts): /metadata reads the
    # bundle the engine resolved.
    server = Server(bundle.parent, tmp_path)
    try:
        status, meta, _ = call(server.port, "GET", "/metadata")
        assert status == 200 and meta["model"] == str(bundle) and meta["card"].startswith("---\n")
    finally:
        assert server.stop()[0] == 0


def test_a_failed_batch_answers_its_requests_and_the_batcher_goes_on():
    import asyncio

    from emotrain.inference.serve import BatchError, Metrics, MicroBatcher

    class FlakyEngine:
        calls = 0

        def predict_scores(self, texts, batch_size):
            FlakyEngine.calls += 1
            if FlakyEngine.calls == 1:
                raise RuntimeError("boom\nsecond line")
            return {"t": [[0.5]] * len(texts)}, [False] * len(texts)

        def results(self, probs, truncated, threshold=None):
            return [{"ok": True} for _ in truncated]

    async def scenario():
        batcher = MicroBatcher(FlakyEngine(), Metrics(), max_batch=8, max_wait_s=0.001)
        batcher.start()
        with pytest.raises(BatchError, match=r"prediction failed \(RuntimeError: boom second line\)"):
            await batcher.predict(["a"], None)
        assert await batcher.predict(["b"], None) == [{"text": "b", "ok": True}]
        await batcher.stop()

    asyncio.run(scenario())


def test_bad_bundle_and_bad_flags_are_one_line(tmp_path):
    env = subprocess_env()
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.inference.serve", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emotrain-serve: error:") and "missing" in lines[0]
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.inference.serve", "--model", "x", "--max-batch", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2 and "--max-batch=0: must be at least 1" in proc.stderr


def test_serving_imports_no_torch(bundle, tmp_path):
    """The server process ran with torch and transformers blocked (sitecustomize): it served anyway."""
    server = Server(bundle, tmp_path)
    try:
        assert call(server.port, "POST", "/predict", {"texts": ["fine"]})[0] == 200
    finally:
        code, err = server.stop()
    assert code == 0 and "blocked" not in err
    # The startup log says what is served: the graph, then each task with its labels and thresholds.
    assert "serving " in err and "fp32 model.onnx" in err and "onnxruntime " in err
    assert "task emotion (primary), multi-label, 28 labels: admiration@" in err


def test_serve_is_a_console_script():
    import importlib.metadata

    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("emotrain-serve") == "emotrain.inference.serve:main"
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
