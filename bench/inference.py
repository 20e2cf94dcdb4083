"""Inference throughput, peak memory and macro-F1: HF pipeline vs the PyTorch, ONNX fp32 and ONNX int8 engines.

    python bench/inference.py --model RUN_DIR [--data .../goemotions/test.tsv] [--limit N]
                              [--batch-size 32] [--threads N] [--repeats 1] [--out results.json]
    python bench/inference.py --limit 1000            # no --model: trains a short model first (see below)

--model: a run directory trained on GoEmotions (data=goemotions). Its bundle (<run>/bundle) is
exported first when missing (python -m emotrain.export checkpoint=RUN_DIR).

Without --model the script trains one itself, into --workdir (default outputs/bench-inference):
``python -m emotrain backbone=<--train-backbone> data=goemotions data.dir=<dir of --data>
trainer.epochs=1 data.max_train_examples=<--train-examples> ...`` - a smoke-test model (MiniLM
by default, a few minutes on 2 cores; ``--train-backbone tiny`` takes seconds but learns nothing).

Engines, each measured in its own subprocess (clean peak RSS; same thread count for all):

- ``pipeline``: the closest fair transformers baseline. ``pipeline("text-classification")`` needs a
  sequence-classification model, and a stock ``BertForSequenceClassification`` would pool with
  [CLS] + tanh pooler, i.e. another model. So the pipeline runs a ``PreTrainedModel`` wrapper around
  the *same* trained encoder, mean pooling and primary-task head (identical logits to the PyTorch
  engine), with ``top_k=None`` (every label's score), sigmoid (multi-label) / softmax, truncation to
  the training max_length and the same batch size. Texts get the same Preprocessor first (timed), as
  a user would have to. It scores only the primary task; the engines score every task.
- ``pytorch``: ``load_engine(run, "pytorch")`` - same model, engine batching (length-sorted).
- ``onnx``: ``load_engine(bundle, "onnx")`` - model.onnx (fp32).
- ``int8``: ``load_engine(bundle, "onnx", quantized=True)`` - model.int8.onnx.
- ``onnx-fused`` / ``int8-fused``: the same from a bundle exported with ``fuse=true`` (onnxruntime's
  transformer optimizer: attention, layer norms and GELU fused, int8 quantised from the fused graph),
  written next to the bundle as ``bundle_fused``: what the (default off) fusion switch earns, in the same run.

Measured per engine: texts/s over the (limited) test texts after a warm-up on the first 64
(best of --repeats), batch-1 latency p50 / p99 (one text per call, the first 300 texts), peak RSS of
the process (VmHWM: interpreter + libraries + model + inference) and its growth over the
interpreter's baseline, load time, and macro-F1 of the primary task against the gold labels
(multi-label decisions at the bundle's tuned thresholds; the same thresholds for the pipeline's scores).
Prints the machine, a table, the ratios and the targets: int8 >= 6x and fp32 ONNX >= 3x the pipeline's
throughput, int8 macro-F1 >= fp32 - 1 point, int8 peak RSS <= 400 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

DEFAULT_DATA = (
    Path(os.environ.get("EMOTRAIN_GOEMOTIONS_DIR", REPO.parent / "shared" / "data" / "goemotions")) / "test.tsv"
)
ENGINES = ("pipeline", "pytorch", "onnx", "int8", "onnx-fused", "int8-fused")
WARMUP = 64
LATENCY_TEXTS = 300  # batch-1 calls timed per engine


# --------------------------------------------------------------------------- data


def read_goemotions(path: Path, limit: int | None) -> tuple[list[str], list[list[int]], list[str]]:
    """Texts, gold label ids and label names (labels.txt next to the file) of a GoEmotions TSV."""
    labels_file = path.parent / "labels.txt"
    names = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts, gold = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                continue
            texts.append(parts[0])
            gold.append([int(x) for x in parts[1].split(",") if x.strip()])
            if limit and len(texts) >= limit:
                break
    return texts, gold, names


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    value = _proc_status_mb("VmRSS")
    return float("nan") if value is None else value


def peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss also carries the parent's peak across fork + exec.
    value = _proc_status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if value is None else value  # KiB on Linux


# --------------------------------------------------------------------------- worker (one engine per process)


def _pipeline(run: Path, threads: int, batch_size: int):
    """HF pipeline over a PreTrainedModel wrapper of the trained encoder + mean pooling + primary head."""
    import torch
    from transformers import PreTrainedModel, pipeline
    from transformers.modeling_outputs import SequenceClassifierOutput

    from emotrain.inference.source import load_source
    from emotrain.models.multitask import pool
    from emotrain.preprocessing import Preprocessor

    torch.set_num_threads(threads)
    src = load_source(run)
    task = next(t for t in src.tasks if t.name == src.primary_task)
    config = src.model.encoder.config.__class__.from_dict(src.model.encoder.config.to_dict())
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {name: i for i, name in enumerate(task.labels)}
    config.problem_type = "multi_label_classification" if task.multilabel else "single_label_classification"

    class MeanPoolClassifier(PreTrainedModel):
        config_class = type(config)
        base_model_prefix = "encoder"

        def __init__(self, cfg, encoder, head, pooling):
            super().__init__(cfg)
            self.encoder, self.head, self.pooling = encoder, head, pooling

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            return SequenceClassifierOutput(logits=self.head(pool(hidden, attention_mask, self.pooling)))

    model = MeanPoolClassifier(config, src.model.encoder, src.model.heads[task.name], src.model.pooling).eval()
    pipe = pipeline("text-classification", model=model, tokenizer=src.tokenizer, device=-1)
    pre = Preprocessor.from_dict(src.meta.get("preprocess") or {})
    func = "sigmoid" if task.multilabel else "softmax"
    index = {name: i for i, name in enumerate(task.labels)}

    def predict(texts):
        out = pipe(
            [pre(t) for t in texts],
            batch_size=batch_size,
            truncation=True,
            max_length=src.max_length,
            top_k=None,
            function_to_apply=func,
        )
        return out

    def to_scores(results):
        import numpy as np

        m = np.zeros((len(results), len(task.labels)), dtype=np.float32)
        for i, row in enumerate(results):
            for item in row:
                m[i, index[item["label"]]] = item["score"]
        return m

    return predict, to_scores


def _engine(kind: str, run: Path, bundle: Path, threads: int, batch_size: int):
    from emotrain.inference import load_engine

    if kind == "pytorch":
        engine = load_engine(run, "pytorch", num_threads=threads)
    else:
        source = bundle.with_name(bundle.name + "_fused") if kind.endswith("-fused") else bundle
        engine = load_engine(source, "onnx", quantized=kind.startswith("int8"), num_threads=threads)
    primary = engine.primary_task

    def predict(texts):
        return engine.predict_batch(texts, batch_size=batch_size)

    def to_scores(results):
        import numpy as np

        return np.asarray([list(r["tasks"][primary]["scores"].values()) for r in results], dtype=np.float32)

    return predict, to_scores


def worker(args) -> None:
    baseline = rss_mb()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    texts, _, _ = read_goemotions(Path(args.data), args.limit)
    t0 = time.perf_counter()
    if args.worker == "pipeline":
        predict, to_scores = _pipeline(Path(args.model), args.threads, args.batch_size)
    else:
        predict, to_scores = _engine(args.worker, Path(args.model), Path(args.bundle), args.threads, args.batch_size)
    predict(texts[:WARMUP])
    load_s = time.perf_counter() - t0
    loaded = rss_mb()
    best = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        results = predict(texts)
        elapsed = time.perf_counter() - t
        best = elapsed if best is None else min(best, elapsed)
    import numpy as np

    latencies = []
    for text in texts[:LATENCY_TEXTS]:
        t = time.perf_counter()
        predict([text])
        latencies.append(time.perf_counter() - t)
    np.save(args.scores_out, to_scores(results))
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers"})
    print(
        json.dumps(
            {
                "engine": args.worker,
                "texts": len(texts),
                "seconds": best,
                "texts_per_s": len(texts) / best,
                "batch1_p50_ms": float(np.percentile(latencies, 50) * 1000),
                "batch1_p99_ms": float(np.percentile(latencies, 99) * 1000),
                "load_s": load_s,
                "rss_baseline_mb": baseline,
                "rss_loaded_mb": loaded,
                "peak_rss_mb": peak_rss_mb(),
                "imports_torch_or_transformers": heavy,
            }
        )
    )


# --------------------------------------------------------------------------- parent


def run_cmd(cmd: list[str], what: str, env: dict | None = None) -> str:
    print(f"[bench] {what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"[bench] {what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def train_quick(args) -> Path:
    workdir = Path(args.workdir).resolve()
    run = workdir / f"run-{args.train_backbone}-{args.train_examples}"
    if (run / "metrics.json").is_file():
        print(f"[bench] reusing the trained model in {run}", file=sys.stderr)
        return run
    data_dir = Path(args.data).resolve().parent
    cmd = [
        sys.executable,
        "-m",
        "emotrain",
        f"backbone={args.train_backbone}",
        "data=goemotions",
        f"data.dir={data_dir}",
        "trainer.epochs=1",
        f"data.max_train_examples={args.train_examples}",
        f"data.max_eval_examples={args.train_eval_examples}",
        "precision=fp32",
        "trainer.progress=false",
        "report=false",
        f"trainer.num_threads={args.threads}",
        f"hydra.run.dir={run}",
    ]
    t = time.perf_counter()
    run_cmd(cmd, "training a quick model (no --model given)")
    print(f"[bench] trained in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return run


def macro_f1(scores, gold: list[list[int]], thresholds, multilabel: bool) -> float:
    import numpy as np
    from sklearn.metrics import f1_score

    n, c = scores.shape
    y = np.zeros((n, c), dtype=np.int64)
    for i, ids in enumerate(gold):
        y[i, [j for j in ids if j < c]] = 1
    if multilabel:
        pred = (scores >= np.asarray(thresholds, dtype=np.float32)).astype(np.int64)
        return float(f1_score(y, pred, average="macro", zero_division=0))
    first = np.asarray([ids[0] if ids else 0 for ids in gold])
    return float(f1_score(first, scores.argmax(-1), average="macro", labels=list(range(c)), zero_division=0))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="run directory trained on GoEmotions (default: train a quick one)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="GoEmotions test.tsv (labels.txt next to it)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N texts (default: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--threads", type=int, default=min(4, os.cpu_count() or 1), help="intra-op threads for every engine"
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per engine (best is reported)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--min-agreement", type=float, default=None, help="passed to the export when the bundle is missing")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument(
        "--workdir", default=str(REPO / "outputs" / "bench-inference"), help="where a quick model is trained"
    )
    ap.add_argument("--train-backbone", default="minilm", choices=("minilm", "tiny"))
    ap.add_argument("--train-examples", type=int, default=2000)
    ap.add_argument("--train-eval-examples", type=int, default=500)
    # worker mode (internal)
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--scores-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        sys.exit(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"--data {data}: not found (a GoEmotions test.tsv with labels.txt next to it)")
    run = Path(args.model).resolve() if args.model else train_quick(args)
    bundle = run / "bundle"
    if not (bundle / "bundle.json").is_file():
        cmd = [sys.executable, "-m", "emotrain.export", f"checkpoint={run}"]
        if args.min_agreement is not None:
            cmd.append(f"min_agreement={args.min_agreement}")
        print(run_cmd(cmd, "exporting the bundle").strip(), file=sys.stderr)
    fused = bundle.with_name(bundle.name + "_fused")
    if any(e.endswith("-fused") for e in engines) and not (fused / "bundle.json").is_file():
        cmd = [sys.executable, "-m", "emotrain.export", f"checkpoint={run}", f"out={fused}", "fuse=true"]
        print(run_cmd(cmd, "exporting the fused bundle").strip(), file=sys.stderr)
    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    fusion = (meta.get("onnx") or {}).get("fusion") or {}
    print(describe("onnxruntime", "torch", "transformers"))
    print(f"bundle graph: {'fused ' + str(fusion.get('fused_operators')) if fusion.get('applied') else 'not fused'}")
    primary = next(t for t in meta["tasks"] if t["name"] == meta["primary_task"])
    texts, gold, names = read_goemotions(data, args.limit)
    f1_ok = primary["labels"] == names
    if not f1_ok:
        print(
            f"[bench] the primary task's labels are not {data.parent / 'labels.txt'}: macro-F1 not computed",
            file=sys.stderr,
        )

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in engines:
            scores_path = Path(tmp) / f"{name}.npy"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                name,
                "--model",
                str(run),
                "--bundle",
                str(bundle),
                "--data",
                str(data),
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
                "--repeats",
                str(args.repeats),
                "--scores-out",
                str(scores_path),
            ] + (["--limit", str(args.limit)] if args.limit else [])
            out = run_cmd(
                cmd,
                f"engine {name}",
                env={"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
            )
            row = json.loads(out.strip().splitlines()[-1])
            import numpy as np

            scores = np.load(scores_path)
            if f1_ok:
                row["macro_f1"] = macro_f1(scores, gold, meta["thresholds"].get(primary["name"]), primary["multilabel"])
            rows[name] = row

    print()
    print(
        f"model: {run}  ({meta.get('backbone')}, primary task {primary['name']!r}, {len(primary['labels'])} labels, "
        f"max_length {meta['max_length']})"
    )
    print(
        f"data: {data}  texts: {len(texts)}  batch size: {args.batch_size}  threads: {args.threads}  repeats: "
        f"{args.repeats}"
    )
    header = (
        f"{'engine':<12}{'texts/s':>10}{'b1 p50 ms':>11}{'b1 p99 ms':>11}{'load s':>9}{'peak RSS MB':>13}"
        f"{'RSS growth MB':>15}{'macro-F1':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        f1 = f"{r['macro_f1']:.4f}" if "macro_f1" in r else "n/a"
        print(
            f"{name:<12}{r['texts_per_s']:>10.1f}{r['batch1_p50_ms']:>11.2f}{r['batch1_p99_ms']:>11.2f}"
            f"{r['load_s']:>9.2f}{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] - r['rss_baseline_mb']:>15.0f}{f1:>10}"
        )
    print()
    ratios = {}
    base = rows.get("pipeline")
    for name, r in rows.items():
        if base and name != "pipeline":
            ratios[f"{name}/pipeline throughput"] = r["texts_per_s"] / base["texts_per_s"]
    for kind in ("onnx", "int8"):
        if kind in rows and f"{kind}-fused" in rows:
            fused, unfused = rows[f"{kind}-fused"], rows[kind]
            ratios[f"{kind} fused/plain throughput"] = fused["texts_per_s"] / unfused["texts_per_s"]
            ratios[f"{kind} plain/fused batch-1 p50"] = unfused["batch1_p50_ms"] / fused["batch1_p50_ms"]
    if "int8" in rows and "onnx" in rows:
        ratios["int8/fp32 throughput"] = rows["int8"]["texts_per_s"] / rows["onnx"]["texts_per_s"]
        ratios["int8/fp32 peak RSS"] = rows["int8"]["peak_rss_mb"] / rows["onnx"]["peak_rss_mb"]
    for k, v in ratios.items():
        print(f"{k:<32}{v:>8.2f}x")
    targets = {}
    if base and "int8" in rows:
        targets["int8 >= 6x pipeline throughput"] = ratios["int8/pipeline throughput"] >= 6.0
    if base and "onnx" in rows:
        targets["fp32 ONNX >= 3x pipeline throughput"] = ratios["onnx/pipeline throughput"] >= 3.0
    if "int8" in rows:
        targets["int8 peak RSS <= 400 MB"] = rows["int8"]["peak_rss_mb"] <= 400
    if f1_ok and "int8" in rows and "onnx" in rows:
        delta = 100 * (rows["onnx"]["macro_f1"] - rows["int8"]["macro_f1"])
        print(f"{'int8 macro-F1 cost vs fp32':<28}{delta:>8.2f} points")
        targets["int8 costs <= 1 macro-F1 point"] = delta <= 1.0
    for k, ok in targets.items():
        print(f"target {k}: {'PASS' if ok else 'FAIL'}")
    torch_free = [n for n in ("onnx", "int8") if n in rows and not rows[n]["imports_torch_or_transformers"]]
    if torch_free:
        print(f"torch/transformers not imported by: {', '.join(torch_free)}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "model": str(run),
                    "data": str(data),
                    "texts": len(texts),
                    "batch_size": args.batch_size,
                    "threads": args.threads,
                    "engines": rows,
                    "ratios": ratios,
                    "targets": targets,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
