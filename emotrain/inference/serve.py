"""emotrain-serve: an ONNX bundle over HTTP (Starlette + uvicorn), torch-free, micro-batched.

    emotrain-serve --model BUNDLE [--quantized] [--host 127.0.0.1] [--port 8000] [--threads N]

Endpoints (JSON in and out; every error is a JSON object ``{"error": {"status", "message", "field"?}}``):

    POST /predict   {"texts": ["...", ...], "threshold": 0.3?}  ->  {"results": [one per text, input order]}
                    each result as emotrain-predict prints it: text, the primary task's label, "tasks", "truncated"
    GET  /health    200 {"status": "ready"} once the model is loaded and a warm-up batch ran
    GET  /metadata  the bundle's facts (tasks, labels, thresholds, preprocessing, test metrics, versions) and card
    GET  /metrics   Prometheus text format (prometheus_client): requests, latency, batch sizes, texts, queue

Micro-batching: concurrent requests share engine batches (up to --max-batch texts, run in length-sorted calls,
one batch at a time). A batch takes every queued request and, under load, waits up to --max-wait-ms for more; a
lone request runs at once (MicroBatcher).

Limits: --max-texts per request, --max-body-bytes per body, texts cut at --max-chars characters (the result says
"truncated": true), --timeout seconds per request (504 after it). SIGTERM / Ctrl-C stop accepting connections,
finish the requests in flight (up to --grace seconds), then exit.

Imports neither torch nor transformers: serving needs only the `inference` extra.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotrain.utils import OneLineArgumentParser, one_line

log = logging.getLogger("emotrain.serve")
PROG = "emotrain-serve"

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8000,
    "max_batch": 64,
    "max_wait_ms": 5.0,
    "max_texts": 256,
    "max_chars": 10_000,
    "max_body_bytes": 2_000_000,
    "timeout": 30.0,
    "grace": 30.0,
}
FIELDS = ("texts", "threshold")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BatchError(Exception):
    """The engine failed on the batch a request was in (the batcher logged the traceback once)."""


class RequestError(Exception):
    """A bad request: the HTTP status, a message naming the problem, and the field it concerns."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class Settings:
    model: Path
    quantized: bool = False
    host: str = DEFAULTS["host"]
    port: int = DEFAULTS["port"]
    threads: int | None = None
    max_batch: int = DEFAULTS["max_batch"]
    max_wait_ms: float = DEFAULTS["max_wait_ms"]
    max_texts: int = DEFAULTS["max_texts"]
    max_chars: int = DEFAULTS["max_chars"]
    max_body_bytes: int = DEFAULTS["max_body_bytes"]
    timeout: float = DEFAULTS["timeout"]
    grace: float = DEFAULTS["grace"]
    access_log: bool = False

    def check(self) -> None:
        """ValueError naming the flag of an impossible value."""
        for name, low in (("max_batch", 1), ("max_texts", 1), ("max_chars", 1), ("max_body_bytes", 64), ("port", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)}: must be at least {low}")
        if self.port > 65535:
            raise ValueError(f"--port={self.port}: must be at most 65535")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads={self.threads}: must be at least 1")
        for name in ("max_wait_ms", "timeout", "grace"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "timeout" and value == 0):
                raise ValueError(f"--{name.replace('_', '-')}={value}: must be a positive number")


# --------------------------------------------------------------------------- metrics


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "emotrain_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "emotrain_request_seconds",
            "Request latency in seconds, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter("emotrain_texts", "Texts predicted", registry=self.registry)
        self.batch_texts = Histogram(
            "emotrain_batch_texts",
            "Texts per engine batch (micro-batched requests)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "emotrain_batch_requests", "Requests per engine batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_seconds = Histogram(
            "emotrain_queue_seconds",
            "Time a request waited for its batch to start",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("emotrain_requests_in_flight", "Requests being handled", registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    texts: list[str]
    threshold: float | None
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


# Texts per engine call inside a gathered batch. Requests arrive in random length order, so one call over a whole
# gathered batch pads every text to the longest; the engine sorts by length and runs calls of this size, which pad
# little and cost about as much per text as larger ones (BENCHMARKS.md, "Serving").
ENGINE_BATCH = 16


class MicroBatcher:
    """Gathers concurrent requests into engine batches: one batch runs at a time on a worker thread.

    A batch takes every request already queued. It then waits up to max_wait_s for more (up to max_batch texts)
    only under load: while another request's body is still arriving, or when the previous batch held several
    requests. A lone request runs at once."""

    def __init__(self, engine, metrics: Metrics, *, max_batch: int, max_wait_s: float):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.arriving = 0  # /predict requests whose body is being read or parsed
        self.last_batch_requests = 0
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotrain-engine")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        while not self.queue.empty():  # nothing will run these any more: answer them rather than let them time out
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(BatchError("the server stopped before this request ran; retry"))
        self.executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def receiving(self):
        """Marks a request whose body is on its way: a forming batch waits for it (up to max_wait_s)."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def predict(self, texts: list[str], threshold: float | None) -> list[dict]:
        job = _Job(texts, threshold, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].texts)
            while size < self.max_batch and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
                size += len(jobs[-1].texts)
            under_load = self.arriving > 0 or self.last_batch_requests > 1 or len(jobs) > 1
            deadline = loop.time() + (self.max_wait_s if under_load else 0.0)
            while size < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job.texts)
            self.last_batch_requests = len(jobs)
            jobs = [j for j in jobs if not j.future.done()]  # timed out or disconnected while queued
            if not jobs:
                continue
            started = time.perf_counter()
            for j in jobs:
                self.metrics.queue_seconds.observe(started - j.queued_at)
            self.metrics.batch_texts.observe(sum(len(j.texts) for j in jobs))
            self.metrics.batch_requests.observe(len(jobs))
            try:
                outputs = await loop.run_in_executor(self.executor, self._predict, jobs)
            except Exception as e:  # an engine failure fails this batch's requests, not the server
                log.exception("prediction failed for a batch of %d requests", len(jobs))
                message = f"prediction failed ({type(e).__name__}: {one_line(e, 120)}); the server keeps serving"
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(BatchError(message))
                continue
            for j, out in zip(jobs, outputs):
                if not j.future.done():
                    j.future.set_result(out)

    def _predict(self, jobs: list[_Job]) -> list[list[dict]]:
        texts = [t for j in jobs for t in j.texts]
        probs, truncated = self.engine.predict_scores(texts, batch_size=ENGINE_BATCH)
        self.metrics.texts.inc(len(texts))
        outputs, start = [], 0
        for j in jobs:
            end = start + len(j.texts)
            results = self.engine.results(
                {k: v[start:end] for k, v in probs.items()}, truncated[start:end], threshold=j.threshold
            )
            outputs.append([{"text": text, **r} for text, r in zip(j.texts, results)])
            start = end
        return outputs


# --------------------------------------------------------------------------- the app


def parse_predict_body(raw: bytes, max_texts: int) -> tuple[list[str], float | None]:
    """The /predict body -> (texts, threshold); RequestError naming the field otherwise."""
    try:
        body = json.loads(raw.decode("utf-8"))  # JSON over HTTP is UTF-8 (RFC 8259); json.loads would guess
    except UnicodeDecodeError as e:
        raise RequestError(400, f"the body is not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RequestError(400, f"the body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer over Python's digit limit, nesting too deep
        raise RequestError(400, f"the body is not valid JSON here: {one_line(e, 120)}") from None
    if not isinstance(body, dict):
        raise RequestError(422, f'the body must be a JSON object like {{"texts": ["..."]}}, got {_kind(body)}')
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        name = one_line(unknown[0], 60)
        raise RequestError(422, f"unknown field {name!r}; the fields are {', '.join(FIELDS)}", name)
    if "texts" not in body:
        raise RequestError(422, 'missing field "texts": a list of strings', "texts")
    texts = body["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f'"texts" must be a list of strings, got {_kind(texts)}', "texts")
    if not texts:
        raise RequestError(422, '"texts" is empty; send at least one text', "texts")
    if len(texts) > max_texts:
        raise RequestError(413, f'"texts" has {len(texts)} items; at most {max_texts} per request', "texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f'"texts"[{i}] must be a string, got {_kind(text)}', f"texts[{i}]")
    threshold = body.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            got = one_line(repr(threshold), 60)
            raise RequestError(422, f'"threshold" must be a number between 0 and 1, got {got}', "threshold")
        threshold = float(threshold)
    return texts, threshold


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def bundle_metadata(engine) -> dict:
    """/metadata: what a client needs to know about the model served (from the bundle directory the engine
    resolved: --model may also name a run directory holding bundle/)."""
    from emotrain.inference.bundle import read_bundle

    bundle_dir = Path(engine.source)
    meta = read_bundle(bundle_dir).meta
    card = bundle_dir / "README.md"
    return {
        "model": str(bundle_dir),
        "file": engine.model_file.name if engine.model_file else None,
        "quantized": engine.quantized,
        "tasks": [{"name": t.name, "labels": list(t.labels), "multilabel": t.multilabel} for t in engine.tasks],
        "primary_task": engine.primary_task,
        "thresholds": engine.thresholds,
        "thresholds_source": meta.get("thresholds_source"),
        "max_length": engine.max_length,
        "max_chars": engine.max_chars,
        "preprocess": engine.preprocessor.to_dict(),
        "test": meta.get("test"),
        "backbone": meta.get("backbone"),
        "git": meta.get("git"),
        "versions": meta.get("versions"),
        "export_versions": meta.get("export_versions"),
        "exported_at": meta.get("exported_at"),
        "card": card.read_text(encoding="utf-8") if card.is_file() else None,
    }


def create_app(settings: Settings, engine=None):
    """The Starlette application: loads the engine (unless given) and warms it up on startup."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse as _StarletteJSON
    from starlette.responses import Response
    from starlette.routing import Route

    class JSONResponse(_StarletteJSON):
        """UTF-8 JSON; a string JSON cannot carry as UTF-8 (a lone surrogate sent as "\\ud800" and echoed back)
        goes out with \\u escapes instead of failing the response."""

        def render(self, content: Any) -> bytes:
            try:
                return super().render(content)
            except UnicodeEncodeError:
                return json.dumps(content, separators=(",", ":")).encode("ascii")

    metrics = Metrics()
    state: dict[str, Any] = {"ready": False}

    def error(status: int, message: str, field_name: str | None = None) -> JSONResponse:
        body = {"status": status, "message": message, **({"field": field_name} if field_name else {})}
        return JSONResponse({"error": body}, status_code=status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise RequestError(400, f"Content-Length {declared!r} is not a number")
            if int(declared) > settings.max_body_bytes:
                raise RequestError(413, f"the body has {declared} bytes; at most {settings.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise RequestError(413, f"the body is over {settings.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request) -> Response:
        batcher = state["batcher"]
        try:
            with batcher.receiving():
                texts, threshold = parse_predict_body(await read_body(request), settings.max_texts)
            results = await asyncio.wait_for(batcher.predict(texts, threshold), settings.timeout)
        except ClientDisconnect:  # the client left before sending its whole body: nobody to answer
            return Response(status_code=400)
        except BatchError as e:  # logged once by the batcher
            return error(500, str(e))
        except RequestError as e:
            return error(e.status, e.message, e.field)
        except asyncio.TimeoutError:
            return error(504, f"the prediction took longer than {settings.timeout:g}s (--timeout); retry later")
        return JSONResponse({"results": results})

    async def health(_: Request) -> Response:
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "quantized": state["engine"].quantized})

    async def metadata(_: Request) -> Response:
        return JSONResponse(state["metadata"])

    async def prometheus(_: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error(404, f"no endpoint {request.url.path}; use POST /predict, GET /health, /metadata, /metrics")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}")
        return error(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return error(500, f"internal error ({type(exc).__name__}); the server keeps serving")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        eng = engine
        if eng is None:
            eng = load_served_engine(settings)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: eng.predict_batch(["warm-up"] * 8, batch_size=8))
        state["engine"] = eng
        state["metadata"] = bundle_metadata(eng)
        state["batcher"] = MicroBatcher(
            eng, metrics, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000
        )
        state["batcher"].start()
        state["ready"] = True
        log.info("ready: http://%s:%d (POST /predict, GET /health, /metadata, /metrics)", settings.host, settings.port)
        try:
            yield
        finally:
            await state["batcher"].stop()
            log.info("stopped")

    routes = [
        Route("/predict", predict, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metadata", metadata, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.serve = state
    app.state.metrics = metrics
    return _Instrumented(app, metrics, state)


class _Instrumented:
    """ASGI wrapper: counts every HTTP request by endpoint and status and times it."""

    ENDPOINTS = ("/predict", "/health", "/metadata", "/metrics")

    def __init__(self, app, metrics: Metrics, state: dict):
        self.app, self.metrics, self.state = app, metrics, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.ENDPOINTS else "other"
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


# --------------------------------------------------------------------------- command line


def load_served_engine(settings: Settings):
    from emotrain.inference import load_engine

    engine = load_engine(
        settings.model, "onnx", quantized=settings.quantized, num_threads=settings.threads, max_chars=settings.max_chars
    )
    for line in describe_engine(engine):
        log.info("%s", line)
    return engine


def describe_engine(engine) -> list[str]:
    """What is served, for the startup log: the graph, versions, then one line per task."""
    import onnxruntime

    from emotrain import __version__

    lines = [
        f"serving {engine.source} ({'int8' if engine.quantized else 'fp32'} {engine.model_file.name}; max "
        f"{engine.max_length} tokens; emotrain {__version__}, onnxruntime {onnxruntime.__version__})"
    ]
    for t in engine.tasks:
        kind = "multi-label" if t.multilabel else "multi-class"
        thresholds = engine.thresholds.get(t.name) if t.multilabel else None
        labels = (
            ", ".join(f"{label}@{th:.2f}" for label, th in zip(t.labels, thresholds))
            if thresholds
            else ", ".join(t.labels)
        )
        primary = " (primary)" if t.name == engine.primary_task else ""
        lines.append(f"task {t.name}{primary}, {kind}, {t.num_labels} labels: {labels}")
    return lines


def parse_args(argv: list[str] | None = None) -> Settings:
    ap = OneLineArgumentParser(
        prog=PROG,
        description="Serve an emotrain ONNX bundle over HTTP: POST /predict, GET /health, /metadata, /metrics.",
    )
    ap.add_argument("--model", "-m", required=True, help="bundle directory (emotrain-export)")
    ap.add_argument("--quantized", action="store_true", help="serve model.int8.onnx (default: model.onnx, fp32)")
    ap.add_argument("--host", default=DEFAULTS["host"], help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=DEFAULTS["port"])
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    ap.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULTS["max_batch"],
        help="a batch stops taking requests once it holds this many texts",
    )
    ap.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULTS["max_wait_ms"],
        help="under load, how long a batch waits for more requests (ms); a lone request runs at once",
    )
    ap.add_argument("--max-texts", type=int, default=DEFAULTS["max_texts"], help="texts per request")
    ap.add_argument("--max-chars", type=int, default=DEFAULTS["max_chars"], help="characters per text (cut after)")
    ap.add_argument("--max-body-bytes", type=int, default=DEFAULTS["max_body_bytes"], help="request body size")
    ap.add_argument("--timeout", type=float, default=DEFAULTS["timeout"], help="seconds per request (504 after)")
    ap.add_argument("--grace", type=float, default=DEFAULTS["grace"], help="seconds to finish requests on SIGTERM")
    ap.add_argument("--access-log", action="store_true", help="log every request")
    a = ap.parse_args(argv)
    settings = Settings(**{**vars(a), "model": Path(a.model)})  # one flag per Settings field
    try:
        settings.check()
    except ValueError as e:
        ap.error(str(e))
    return settings


def main(argv: list[str] | None = None) -> int:
    """Console script ``emotrain-serve``."""
    from emotrain.errors import EmotrainError, MissingDependencyError, require_packages
    from emotrain.inference.cli import logging_to_stderr

    try:
        require_packages("emotrain-serve", SERVE_PACKAGES)
    except MissingDependencyError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    settings = parse_args(argv)
    with logging_to_stderr(PROG, logging.INFO):
        try:
            engine = load_served_engine(settings)  # before binding: a bad bundle fails fast, in one line
        except (EmotrainError, OSError, ValueError) as e:
            print(f"{PROG}: error: {one_line(e, 500)}", file=sys.stderr)
            return 1
        import uvicorn

        config = uvicorn.Config(
            create_app(settings, engine),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=settings.access_log,
            timeout_graceful_shutdown=settings.grace,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        server.run()  # SIGINT / SIGTERM: stop accepting, finish in-flight requests, run the lifespan's shutdown
        if not server.started:  # uvicorn logged why (the port is taken, the warm-up failed, ...)
            where = f"{settings.host}:{settings.port}"
            print(f"{PROG}: error: the server did not start on {where} (see above)", file=sys.stderr)
            return 1
    return 0


SERVE_PACKAGES = {
    "onnxruntime": "onnxruntime",
    "tokenizers": "tokenizers",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "prometheus_client": "prometheus-client",
}


if __name__ == "__main__":
    sys.exit(main())
