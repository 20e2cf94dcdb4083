"""fp32 vs bf16 autocast on this machine: training throughput and loss, same data and seed.

    python bench/precision.py [--steps 40] [--repeats 2]

Used to decide what precision=auto picks on a CPU (see emotrain/training/precision.py).
Prints samples/s per precision (median of repeats), the ratio, and the final losses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import compose  # noqa: E402
from emotrain.recipe import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backbone", default="minilm")
    args = ap.parse_args()
    figures: dict[str, list] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision in figures:  # interleaved so machine noise hits both alike
            with tempfile.TemporaryDirectory() as tmp:
                overrides = [
                    f"backbone={args.backbone}",
                    f"precision={precision}",
                    "trainer.progress=false",
                    "trainer.epochs=100",
                    f"trainer.max_steps={args.steps}",
                    "trainer.eval_every_steps=1000000",
                    "checkpoint=none",
                    "report=false",
                ]
                r = run(compose(overrides, Path(tmp)), overrides)
                figures[precision].append(
                    (r["train_samples_per_s"], r["history"][-1]["train_loss"], r["final_val"]["loss"])
                )
    print(f"{'precision':<10}{'samples/s (median)':>20}{'train loss':>12}{'val loss':>10}")
    med = {}
    for p, rows in figures.items():
        med[p] = statistics.median(r[0] for r in rows)
        print(f"{p:<10}{med[p]:>20.1f}{rows[-1][1]:>12.4f}{rows[-1][2]:>10.4f}")
    print(f"bf16 / fp32 throughput: {med['bf16'] / med['fp32']:.2f}x")


if __name__ == "__main__":
    main()
