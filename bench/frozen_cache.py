"""Frozen-encoder feature cache: a k-fold x N-epoch `freeze=full` sweep with and without it.

    python bench/frozen_cache.py [--data ../shared/data/goemotions] [--k 5] [--epochs 10]
                                 [--baseline-epochs 1] [--baseline-folds 1]

Both sweeps are real Hydra multiruns launched as a user would (`python -m emotrain -m
sweep=kfold freeze=full ...`), MiniLM-L6 on GoEmotions. The cached sweep starts from an
empty cache directory, so its time includes computing every text's features once.

Without the cache every epoch re-runs the encoder over all texts, so that sweep costs
hours on 2 CPU cores; by default the baseline runs `--baseline-folds` fold(s) for
`--baseline-epochs` epoch(s) and the script extrapolates linearly to k x epochs from its
per-epoch time (stated in the output). Use --baseline-epochs 10 --baseline-folds 5 for
the full measurement. The metrics of the folds both sweeps ran (same epochs) are compared;
peak RSS is the largest of any job's process.
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


def peak_rss_mb() -> float:
    """Largest peak RSS of any finished descendant so far (a sweep's jobs run in its process)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def sweep(
    tmp: Path, name: str, data: str, k: int, folds: int, epochs: int, cache: bool, extra: list[str]
) -> tuple[float, list[dict]]:
    out = tmp / name
    cmd = [
        sys.executable,
        "-m",
        "emotrain",
        "-m",
        "cv=kfold",
        f"cv.k={k}",
        f"cv.fold={','.join(str(f) for f in range(folds))}",
        "freeze=full",
        f"freeze.feature_cache={str(cache).lower()}",
        "data=goemotions",
        f"data.dir={data}",
        f"trainer.epochs={epochs}",
        "trainer.progress=false",
        "checkpoint=none",
        "report=false",
        "optim.lr=1e-3",
        f"paths.cache_dir={tmp / 'cache'}",
        f"hydra.sweep.dir={out}",
        "hydra.callbacks.sweep_summary.enabled=false",
        *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep {name} failed:\n{proc.stderr[-3000:]}")
    jobs = sorted(out.glob("*/metrics.json"), key=lambda p: p.parent.name)
    return elapsed, [json.loads(p.read_text()) for p in jobs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "goemotions"))
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--baseline-epochs", type=int, default=1)
    ap.add_argument("--baseline-folds", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="extra overrides for both sweeps, e.g. data.max_train_examples=5000")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cached_s, cached = sweep(tmp, "cached", args.data, args.k, args.k, args.epochs, True, args.overrides)
        cached_rss = peak_rss_mb()
        cache_mb = sum(p.stat().st_size for p in (tmp / "cache" / "features").rglob("*.npz")) / 2**20
        # Same settings but fewer epochs for the baseline: compare the cached sweep's own short twin.
        twin_s, twin = sweep(
            tmp, "cached_twin", args.data, args.k, args.baseline_folds, args.baseline_epochs, True, args.overrides
        )
        base_s, base = sweep(
            tmp, "uncached", args.data, args.k, args.baseline_folds, args.baseline_epochs, False, args.overrides
        )
        all_rss = peak_rss_mb()
    full_jobs = args.k * args.epochs
    ran = args.baseline_folds * args.baseline_epochs
    # Per-job fixed cost (start-up, model load) does not scale with epochs: estimate it from the
    # cached twin, whose epochs cost almost nothing, and scale only the rest.
    fixed = twin_s / args.baseline_folds
    per_epoch = max(base_s - twin_s, 1e-9) / ran
    extrapolated = args.k * fixed + full_jobs * per_epoch
    print(f"\nfreeze=full, {args.k}-fold x {args.epochs} epochs, MiniLM-L6, GoEmotions ({args.data})")
    print(
        f"  with cache (cold start, includes computing all features once): {cached_s:8.1f} s; cache {cache_mb:.1f} MB"
    )
    print(f"  peak RSS: {cached_rss:.0f} MB in the cached sweep, {all_rss:.0f} MB over all sweeps")
    print(f"  without cache, measured {args.baseline_folds} fold(s) x {args.baseline_epochs} epoch(s): {base_s:8.1f} s")
    print(f"    per fold-epoch without cache ~{per_epoch:.1f} s; fixed per job ~{fixed:.1f} s")
    label = "measured" if ran == full_jobs else "extrapolated"
    total = base_s if ran == full_jobs else extrapolated
    print(f"  without cache, {args.k} x {args.epochs} ({label}):            {total:8.1f} s")
    print(f"  speed-up: {total / cached_s:.1f}x")
    print("  metrics, folds run by both (cached twin vs uncached, same epochs):")
    for a, b in zip(twin, base):
        diffs = {key: abs(a["test"][key] - b["test"][key]) for key in a["test"]}
        worst = max(diffs, key=diffs.get)
        print(
            f"    fold {a['config']['cv']['fold']}: test loss {a['test']['loss']:.6f} vs {b['test']['loss']:.6f}; "
            f"largest test-metric difference {diffs[worst]:.2e} ({worst})"
        )
    print(
        f"  cached sweep: mean test macro_f1 {sum(j['test']['macro_f1'] for j in cached) / len(cached):.4f} over "
        f"{len(cached)} folds"
    )


if __name__ == "__main__":
    main()
