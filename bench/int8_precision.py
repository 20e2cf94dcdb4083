"""int8 on CPUs without VNNI: decisions and speed of a bundle's model.int8.onnx with and without onnxruntime's
``session.x64quantprecision`` (u8 x u8 instead of saturating u8 x s8 kernels), against the fp32 model.onnx.

    python bench/int8_precision.py --model RUN_OR_BUNDLE [--data .../goemotions/test.tsv] [--limit 2000]
                                   [--rounds 3] [--threads 2]

--data: a GoEmotions-style TSV (text in the first column) or a text file of one text per line; without it, the
built-in sample sentences. The engine sets the option by default (emotrain/inference/engine.py, SESSION_CONFIG);
this script turns it off for the "off" engine only. Agreement is the export check's: per task, single-label
decisions equal, multi-label switched-on labels shared (intersection over union, an empty pair agreeing).
Throughput: texts/s of predict_scores at batch 32, the two int8 engines in turns (--rounds), median.
On a CPU with VNNI or AMX onnxruntime ignores the option: both rows should then agree and run alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402


def read_texts(path: Path | None, limit: int) -> list[str]:
    if path is None:
        from emotrain.data.sample import load_sample

        data = load_sample()
        return [t for split in (data.train, data.val, data.test) for t in split.texts][:limit]
    lines = path.read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t", 1)[0] for line in lines] if path.suffix == ".tsv" else lines
    return [t for t in texts if t.strip()][:limit]


def agreement(engine, a: dict, b: dict) -> float:
    """The export check's decision agreement between two score sets of one engine's tasks."""
    da, db = engine.decide(a), engine.decide(b)
    agree = total = 0
    for task in engine.tasks:
        x, y = da[task.name], db[task.name]
        if task.multilabel:
            none = ~(x | y).any(-1)
            agree += int((x & y).sum() + none.sum())
            total += int((x | y).sum() + none.sum())
        else:
            agree += int((x == y).sum())
            total += int(x.size)
    return agree / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a run directory or a bundle with model.int8.onnx")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import emotrain.inference.engine as engine_mod
    from emotrain.inference import load_engine

    print(describe())
    texts = read_texts(args.data, args.limit)
    fp32 = load_engine(args.model, "onnx", num_threads=args.threads)
    saved = dict(engine_mod.SESSION_CONFIG)
    engines = {"on": load_engine(args.model, "onnx", quantized=True, num_threads=args.threads)}
    engine_mod.SESSION_CONFIG.clear()
    try:
        engines["off"] = load_engine(args.model, "onnx", quantized=True, num_threads=args.threads)
    finally:
        engine_mod.SESSION_CONFIG.update(saved)

    reference, _ = fp32.predict_scores(texts)
    scores = {name: e.predict_scores(texts)[0] for name, e in engines.items()}
    speed = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, e in engines.items():
            started = time.perf_counter()
            e.predict_scores(texts)
            speed[name].append(len(texts) / (time.perf_counter() - started))

    print(f"model {args.model}, {len(texts)} texts, {args.threads} threads, {args.rounds} rounds")
    print("| int8 engine | decision agreement with fp32 | max abs score diff | texts/s (median) |")
    print("| --- | --- | --- | --- |")
    for name in engines:
        diff = max(float(abs(scores[name][t] - reference[t]).max()) for t in reference)
        label = "session.x64quantprecision=1 (default)" if name == "on" else "option off (onnxruntime's default)"
        print(
            f"| {label} | {agreement(fp32, reference, scores[name]):.1%} | {diff:.3g} | "
            f"{statistics.median(speed[name]):.1f} |"
        )
    print(f"throughput on / off: {statistics.median(speed['on']) / statistics.median(speed['off']):.2f}x")


if __name__ == "__main__":
    main()
