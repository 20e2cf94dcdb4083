"""emotrain-serve under load: throughput and latency with 1, 8 and 32 concurrent clients, next to predict_batch.

    python bench/serve.py --model BUNDLE [--data .../goemotions/test.tsv] [--requests 400] [--clients 1,8,32]
                          [--texts-per-request 1] [--quantized] [--threads N] [--out serve.json]

Starts `emotrain-serve --model BUNDLE` on 127.0.0.1 (a free port; loopback only), waits for /health, then for
each client count sends --requests POST /predict requests of --texts-per-request GoEmotions test texts from that
many threads, each thread on its own keep-alive connection, and stops the server. Prints per client count:
texts/s, requests/s, latency p50 / p95 / p99, errors, and CPU seconds per text spent by the server and by
the clients (on a small machine they share the cores). Then, in the same run with the server stopped,
`engine.predict_batch` over the same texts in this process (batch 32, same thread count): the ceiling the
micro-batching server approaches. With --out, everything as JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

DEFAULT_DATA = (
    Path(os.environ.get("EMOTRAIN_GOEMOTIONS_DIR", REPO.parent / "shared" / "data" / "goemotions")) / "test.tsv"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "emotrain.inference.serve", "--model", str(bundle), "--port", str(port)]
    cmd += ["--threads", str(args.threads)] + (["--quantized"] if args.quantized else []) + args.server_args.split()
    # stderr into a file, not a pipe nobody reads once the server is up (a full pipe would block the server).
    log = tempfile.NamedTemporaryFile("w+", prefix="emotrain-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stderr=log, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {Path(log.name).read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 120 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port: int, texts: list[str], clients: int, requests: int, per_request: int, server_pid: int) -> dict:
    """`requests` requests from `clients` threads; latency of each, errors, wall time, and the CPU seconds the
    clients (this process) and the server spent: on a small machine both share the cores."""
    latencies: list[float] = []
    errors = {"count": 0, "first": None}
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            batch = [texts[(i * per_request + k) % len(texts)] for k in range(per_request)]
            body = json.dumps({"texts": batch}).encode()
            started = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and len(json.loads(payload)["results"]) == len(batch)
            except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as e:
                ok, payload = False, repr(e).encode()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors["count"] += 1
                    errors["first"] = errors["first"] or payload[:200].decode(errors="replace")
        conn.close()

    started, client_cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
    for future in futures:
        future.result()  # a client that died is a bench bug: say so
    wall = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_cpu, cpu_seconds(server_pid) - server_cpu
    lat = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": requests,
        "texts_per_request": per_request,
        "wall_s": wall,
        "texts_per_s": requests * per_request / wall,
        "requests_per_s": requests / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "client_cpu_s": client_cpu,
        "server_cpu_s": server_cpu,
        "errors": errors["count"],
        "first_error": errors["first"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="bundle directory (emotrain-export)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="GoEmotions test.tsv")
    ap.add_argument("--requests", type=int, default=400, help="requests per client count")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--texts-per-request", type=int, default=1)
    ap.add_argument("--quantized", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--server-args", default="", help="more emotrain-serve flags, e.g. '--max-wait-ms 0'")
    ap.add_argument("--out")
    args = ap.parse_args()

    texts = [line.split("\t", 1)[0] for line in Path(args.data).read_text(encoding="utf-8").splitlines()]
    print(describe("onnxruntime", "starlette", "uvicorn"), flush=True)
    port = free_port()
    server = start_server(Path(args.model), port, args)
    rows = []
    try:
        drive(port, texts, 4, 40, args.texts_per_request, server.pid)  # warm-up
        for clients in [int(c) for c in args.clients.split(",")]:
            row = drive(port, texts, clients, args.requests, args.texts_per_request, server.pid)
            rows.append(row)
            print(
                f"  {clients:>3} clients: {row['texts_per_s']:7.1f} texts/s, p50 {row['p50_ms']:6.1f} ms, "
                f"p95 {row['p95_ms']:6.1f} ms, p99 {row['p99_ms']:6.1f} ms, errors {row['errors']}, "
                f"CPU s: clients {row['client_cpu_s']:.1f}, server {row['server_cpu_s']:.1f}",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    from emotrain.inference import load_engine

    engine = load_engine(args.model, "onnx", quantized=args.quantized, num_threads=args.threads)
    n = args.requests * args.texts_per_request
    sample = [texts[i % len(texts)] for i in range(n)]
    engine.predict_batch(sample[:64])
    started, cpu = time.perf_counter(), time.process_time()
    engine.predict_batch(sample, batch_size=32)
    batch_rate, batch_cpu = n / (time.perf_counter() - started), time.process_time() - cpu

    print(
        f"\nemotrain-serve, {'int8' if args.quantized else 'fp32'} {Path(args.model).name}, {args.threads} threads, "
        f"{args.requests} requests of {args.texts_per_request} GoEmotions test text(s) per client count"
    )
    print(
        f"{'clients':>8}{'texts/s':>10}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs batch':>10}"
        f"{'server CPU ms/text':>20}{'client CPU ms/text':>20}"
    )
    for r in rows:
        n_texts = r["requests"] * r["texts_per_request"]
        print(
            f"{r['clients']:>8}{r['texts_per_s']:>10.1f}{r['requests_per_s']:>9.1f}{r['p50_ms']:>9.1f}"
            f"{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors']:>8}{r['texts_per_s'] / batch_rate:>10.2f}"
            f"{1000 * r['server_cpu_s'] / n_texts:>20.2f}{1000 * r['client_cpu_s'] / n_texts:>20.2f}"
        )
    print(
        f"engine.predict_batch (batch 32, in process, same texts): {batch_rate:.1f} texts/s, "
        f"{1000 * batch_cpu / n:.2f} CPU ms/text"
    )
    if args.out:
        summary = {"rows": rows, "predict_batch_texts_per_s": batch_rate, "predict_batch_cpu_s": batch_cpu}
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
