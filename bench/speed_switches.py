"""Do emotrain's speed switches earn their place? Each one off in turn, interleaved with the defaults.

    python bench/speed_switches.py [--repeats 3] [--n 1000] [--skip-default-job] [--skip-throughput]

Switch: trainer.compact_embeddings (only the word-embedding rows of training tokens train). A switch
stays only if switching it off costs at least 5% in these runs (the project's rule). The fast
dropout, the heap reuse and the CPU clipping shortcut were measured this way and removed
(BENCHMARKS.md; the clipping shortcut's A/B patched torch's clip_grad_norm_ in at commit dac1f69).

1. The default job, `python -m emotrain` (MiniLM-L6, the sample data, 6 epochs): the run's
   training samples/s (metrics.json train_samples_per_s, evaluation excluded) and its wall time.
2. The throughput bench's emotrain child (bench/train_throughput.py): the first N GoEmotions
   texts, 28 labels, batch 32, max length 64, one epoch; fp32, and bf16 where the CPU has it.

Every measurement is its own process; configurations alternate within each repeat, so machine
noise hits all alike. Prints the machine, medians and each switch's ratio (on / off).
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from machine import cpu, describe  # noqa: E402
from train_throughput import EMOTRAIN_CHILD, child  # noqa: E402

SWITCHES = {"compact embeddings": ["trainer.compact_embeddings=false"]}
CONFIGS = {"defaults": [], **{f"no {name}": extra for name, extra in SWITCHES.items()}}


def default_job(extra: list[str], work: Path) -> dict:
    run = work / f"run_{time.monotonic_ns()}"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
        "EMOTRAIN_CACHE": str(work / "cache"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotrain",
            *extra,
            "trainer.progress=false",
            "checkpoint=none",
            "report=false",
            f"hydra.run.dir={run}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    m = json.loads((run / "metrics.json").read_text())
    return {
        "samples_per_s": m["train_samples_per_s"],
        "wall_s": m["wall_time_s"],
        "test_macro_f1": m["test"]["macro_f1"],
    }


def report(title: str, results: dict[str, list[dict]], key: str) -> None:
    med = {name: statistics.median(r[key] for r in rows) for name, rows in results.items()}
    print(f"\n{title} (median of {len(next(iter(results.values())))}; {key})")
    for name, value in med.items():
        spread = [round(r[key], 1) for r in results[name]]
        print(f"  {name:<26}{value:>10.1f}   runs {spread}")
    base = med["defaults"]
    for name in SWITCHES:
        off = med[f"no {name}"]
        gain = base / off if key != "wall_s" else off / base
        print(f"  {name:<26} on/off = {gain:.3f}x  ({'keeps its place' if gain >= 1.05 else 'below the 5% bar'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "goemotions"))
    ap.add_argument("--skip-default-job", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    print(describe("torch", "transformers"), flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_default_job:
            results: dict[str, list] = {name: [] for name in CONFIGS}
            for rep in range(args.repeats):
                for name, extra in CONFIGS.items():
                    r = default_job(extra, tmp)
                    results[name].append(r)
                    print(
                        f"  default job [{rep + 1}/{args.repeats}] {name:<24} {r['samples_per_s']:7.1f} samples/s  "
                        f"{r['wall_s']:6.1f} s  "
                        f"test macro-F1 {r['test_macro_f1']:.4f}",
                        flush=True,
                    )
            report("Default job (python -m emotrain)", results, "samples_per_s")
            report("Default job (python -m emotrain)", results, "wall_s")
        if not args.skip_throughput:
            src = Path(args.data)
            lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[: args.n]
            (tmp / "train.tsv").write_text("".join(lines), encoding="utf-8")
            for name in ("dev.tsv", "test.tsv"):
                (tmp / name).write_text(
                    "".join((src / name).read_text(encoding="utf-8").splitlines(keepends=True)[:200]), encoding="utf-8"
                )
            (tmp / "labels.txt").write_text((src / "labels.txt").read_text(encoding="utf-8"), encoding="utf-8")
            precisions = ["fp32", *(["bf16"] if any(f in cpu()["flags"] for f in ("avx512_bf16", "amx_bf16")) else [])]
            for p in precisions:
                results = {name: [] for name in CONFIGS}
                for rep in range(args.repeats):
                    for name, extra in CONFIGS.items():
                        cfg = {
                            "train": str(tmp / "train.tsv"),
                            "dir": str(tmp),
                            "out": str(tmp / f"tp_{p}_{rep}_{len(results[name])}_{name.replace(' ', '_')}"),
                            "precision": p,
                            "batch_size": 32,
                            "max_length": 64,
                            "lr": 1e-4,
                            "extra": extra,
                        }
                        r = child(EMOTRAIN_CHILD, cfg)
                        results[name].append(r)
                        print(
                            f"  throughput {p} [{rep + 1}/{args.repeats}] {name:<24} {r['samples_per_s']:7.1f} "
                            f"samples/s  loss {r['train_loss']:.4f}",
                            flush=True,
                        )
                report(f"Throughput bench, {args.n} GoEmotions texts, {p}", results, "samples_per_s")
    print(f"\nwall {time.time() - started:.0f} s")
    print(describe("torch", "transformers"))


if __name__ == "__main__":
    main()
