"""Does onnxruntime's transformer fusion earn its place? Fused and unfused bundles of one model, interleaved.

    python bench/onnx_fusion.py --fused RUN/bundle_fused --plain RUN/bundle [--limit 2000] [--rounds 5] [--threads 2]

Both bundles come from one run (`emotrain-export checkpoint=RUN`, and the same with `fuse=true`; bench/inference.py
writes both). All four engines (fp32 / int8, fused / plain) are loaded in this one process and measured in turns,
round after round, so drift on a noisy machine hits all of them alike: per round, `predict_batch` over the first
--limit GoEmotions test texts (batch 32) and 200 batch-1 calls. Prints the machine, each engine's median over the
rounds (texts/s, batch-1 p50 / p99 ms) and the fused / plain ratios; a switch earns its place at >= 1.05x.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

DEFAULT_DATA = (
    Path(os.environ.get("EMOTRAIN_GOEMOTIONS_DIR", REPO.parent / "shared" / "data" / "goemotions")) / "test.tsv"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fused", required=True, help="the model exported with fuse=true")
    ap.add_argument("--plain", required=True, help="the same model exported with the defaults (fuse=false)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from emotrain.inference import load_engine

    lines = Path(args.data).read_text(encoding="utf-8").splitlines()[: args.limit]
    texts = [line.split("\t")[0] for line in lines]
    engines = {
        f"{precision} {kind}": load_engine(path, "onnx", quantized=precision == "int8", num_threads=args.threads)
        for kind, path in (("fused", args.fused), ("plain", args.plain))
        for precision in ("fp32", "int8")
    }
    print(describe("onnxruntime"))
    print(f"{len(texts)} texts, batch 32, {args.threads} threads, {args.rounds} rounds, engines in turns", flush=True)
    for engine in engines.values():
        engine.predict_batch(texts[:64], batch_size=32)
    throughput = {name: [] for name in engines}
    single = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, engine in engines.items():
            t = time.perf_counter()
            engine.predict_batch(texts, batch_size=32)
            throughput[name].append(len(texts) / (time.perf_counter() - t))
            for text in texts[:200]:
                t = time.perf_counter()
                engine.predict_batch([text])
                single[name].append((time.perf_counter() - t) * 1000)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {throughput[n][-1]:.0f}/s" for n in engines), flush=True)
    print(f"{'engine':<12}{'texts/s':>10}{'b1 p50 ms':>11}{'b1 p99 ms':>11}")
    for name in engines:
        p50, p99 = np.percentile(single[name], [50, 99])
        print(f"{name:<12}{np.median(throughput[name]):>10.1f}{p50:>11.2f}{p99:>11.2f}")
    for precision in ("fp32", "int8"):
        fused, plain = f"{precision} fused", f"{precision} plain"
        ratio = np.median(throughput[fused]) / np.median(throughput[plain])
        latency = np.percentile(single[plain], 50) / np.percentile(single[fused], 50)
        print(f"{precision}: fused/plain throughput {ratio:.2f}x, plain/fused batch-1 p50 {latency:.2f}x")


if __name__ == "__main__":
    main()
