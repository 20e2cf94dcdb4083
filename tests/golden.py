"""Golden outputs: a small matrix of deterministic runs whose metrics.json values (minus times, paths and versions)
and an exported bundle's predictions must not change when the code is reorganised.

    python tests/golden.py --record     # (re)write tests/golden/golden.json from the current code
    python -m pytest tests/test_golden.py

Every run is deterministic=true, fp32, one thread, the tiny backbone; the GoEmotions case needs
../shared/data/goemotions (EMOTRAIN_GOEMOTIONS_DIR) and is skipped without it.

The record is compared with `differences`: everything discrete exactly (keys, lengths, types, labels, decisions,
epochs, counts, statuses), floats within a relative tolerance, because another CPU's kernels (AVX2, AVX-512, AMX)
round fp32 sums differently (measured against the Zen 4 record: at most 2.7e-7 relative on a Xeon with AMX,
4.7e-7 on a Zen 3; no discrete value differed).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from conftest import GOEMOTIONS_DIR, QUICK, REPO_ROOT, copy_goemotions_slice, subprocess_env, train  # noqa: E402

GOLDEN_FILE = TESTS / "golden" / "golden.json"
BASE = [
    *QUICK,
    "deterministic=true",
    "checkpoint=default",
    "data.max_train_examples=96",
    "trainer.epochs=2",
    "optim.lr=5e-3",
]
CASES = {
    "default_tiny": [],
    "focal_uncertainty": ["loss=focal", "loss.task_weighting=uncertainty", "loss.gamma=1.5"],
    "freeze_progressive": ["freeze=progressive", "trainer.epochs=3"],
    "kfold_fold1": ["cv=kfold", "cv.k=3", "cv.fold=1"],
}
# Keys whose values depend on the machine, the clock or the temporary directory, not on the maths.
VOLATILE = {
    "wall_time_s",
    "train_samples_per_s",
    "reproducibility",
    "git",
    "versions",
    "resumed_from",
    "model_dir",
    "overrides",
    "format",
    "format_version",
}  # the last two: metadata of the versioned RunResult, added by the redesign
# Floats: relative tolerance 1e-5 (20x the largest cross-CPU difference measured), and an absolute floor for values
# near zero, where a relative bound is meaningless (a probability of 3e-9 may come out as 3.1e-9 elsewhere).
REL_TOL = 1e-5
ABS_TOL = 1e-9
BUNDLE_TEXTS = ["I am so happy for you!", "This is awful and I hate it.", "What?! I did not expect that.", "meh", ""]


def normalise(metrics: dict) -> dict:
    """metrics.json without what a reorganisation may legitimately change (times, paths, versions)."""
    out = {k: v for k, v in metrics.items() if k not in VOLATILE}
    config = dict(out.get("config") or {})
    config.pop("paths", None)
    config.pop("resume", None)
    config["data"] = {k: v for k, v in (config.get("data") or {}).items() if k != "dir"}  # a temporary copy's path
    out["config"] = config
    return json.loads(json.dumps(out))


def differences(now, golden, path: str = "", *, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> list[str]:
    """Every place where `now` differs from `golden`, one line each naming its path ('[]' if they agree).

    Dict keys, list lengths, types, strings, booleans, integers and None must match exactly; two floats match when
    within `rel_tol` of the larger magnitude or within `abs_tol`. A non-finite float matches only itself.
    """
    where = path or "(root)"
    if type(now) is not type(golden):
        return [
            f"{where}: {type(golden).__name__} {_short(golden)} in the record, {type(now).__name__} {_short(now)} now"
        ]
    if isinstance(golden, dict):
        out = [f"{path}/{k}: missing now (recorded: {_short(golden[k])})" for k in golden if k not in now]
        out += [f"{path}/{k}: not in the record (now: {_short(now[k])})" for k in now if k not in golden]
        for k in golden:
            if k in now:
                out += differences(now[k], golden[k], f"{path}/{k}", rel_tol=rel_tol, abs_tol=abs_tol)
        return out
    if isinstance(golden, list):
        if len(now) != len(golden):
            return [f"{where}: {len(golden)} items in the record, {len(now)} now"]
        out = []
        for i, (a, b) in enumerate(zip(now, golden)):
            out += differences(a, b, f"{path}[{i}]", rel_tol=rel_tol, abs_tol=abs_tol)
        return out
    if isinstance(golden, float):
        if math.isnan(golden) and math.isnan(now):
            return []
        if now == golden or (math.isfinite(now) and math.isclose(now, golden, rel_tol=rel_tol, abs_tol=abs_tol)):
            return []
        rel = (
            abs(now - golden) / max(abs(now), abs(golden)) if math.isfinite(now) and math.isfinite(golden) else math.inf
        )
        return [
            f"{where}: {golden!r} in the record, {now!r} now (relative difference {rel:.2g}, tolerance {rel_tol:g})"
        ]
    if now != golden:
        return [f"{where}: {golden!r} in the record, {now!r} now"]
    return []


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_run(work: Path) -> dict:
    """2 processes (gloo), the default tiny case's settings with a per-rank batch of 8."""
    run = work / "gloo"
    env = subprocess_env(work / "cache", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "emotrain",
        *BASE,
        "trainer.batch_size=8",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"gloo run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((run / "metrics.json").read_text())


def _bundle_predictions(run_dir: Path, work: Path) -> list:
    from emotrain.inference import export_bundle, load_engine

    bundle = export_bundle(run_dir, out=work / "bundle", quantize=False)
    engine = load_engine(bundle, num_threads=1)
    return [{"label": r["emotion"], "scores": r["tasks"]} for r in engine.predict_batch(BUNDLE_TEXTS, batch_size=2)]


def compute(work: Path, *, with_gloo: bool = True) -> dict:
    """Every case's normalised metrics.json (and the bundle's predictions), computed now."""
    os.environ["EMOTRAIN_CACHE"] = str(work / "cache")
    out: dict = {}
    for name, extra in CASES.items():
        out[name] = normalise(train([*BASE, *extra], work / name))
    # 2 epochs, then resumed to 3: the resumed run's metrics (the straight 3-epoch run equals it, tested elsewhere).
    first = train([*BASE], work / "resume_a")
    run_a = Path(first["config"]["paths"]["output_dir"])
    out["resumed_2_to_3"] = normalise(train([*BASE, "trainer.epochs=3", f"resume={run_a}"], work / "resume_b"))
    if (GOEMOTIONS_DIR / "train.tsv").is_file():
        data = copy_goemotions_slice(GOEMOTIONS_DIR, work / "goemotions")
        out["goemotions_tuned"] = normalise(
            train([*BASE, "data=goemotions", f"data.dir={data}"], work / "goemotions_run")
        )
    if with_gloo:
        out["gloo_2_processes"] = normalise(_gloo_run(work))
    out["bundle_predictions"] = _bundle_predictions(work / "default_tiny" / "run", work)
    return out


def main() -> None:
    if "--record" not in sys.argv:
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        golden = compute(Path(tmp))
    GOLDEN_FILE.parent.mkdir(exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN_FILE.relative_to(REPO_ROOT)}: {', '.join(golden)}")


if __name__ == "__main__":
    main()
