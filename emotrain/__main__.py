"""`python -m emotrain [group=option ...] [key=value ...]`: the Hydra entry point (console script `emotrain`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import emotrain.config  # noqa: F401  (registers the structured-config schemas)
from emotrain.callbacks import SweepJobFailed  # also registers the config resolvers
from emotrain.errors import EmotrainError
from emotrain.io import write_json

log = logging.getLogger("emotrain")

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from emotrain.train import TrainingInterrupted, run  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    out_dir = Path(hc.runtime.output_dir)
    try:
        results = run(cfg, overrides=overrides)
    except TrainingInterrupted as e:
        write_json(out_dir / "status.json", {"status": "interrupted", "checkpoint": str(e.checkpoint), "message": str(e), "overrides": overrides})
        log.warning("%s", e)
        print(f"emotrain: {e}", file=sys.stderr)
        sys.exit(130)  # the shell's code for "ended by Ctrl-C"
    except EmotrainError as e:
        write_json(out_dir / "status.json", {"status": "failed", "error": str(e), "overrides": overrides})
        log.error("%s", e)
        if hc.mode == RunMode.MULTIRUN:
            # Hydra runs the remaining jobs of the batch, then reports this one line (no
            # traceback) and exits non-zero; Optuna records the trial as failed.
            raise SweepJobFailed(f"emotrain: error in job {hc.job.num} ({out_dir}): {e}") from e
        print(f"emotrain: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        write_json(out_dir / "status.json", {"status": "interrupted", "overrides": overrides})
        raise
    except Exception as e:
        write_json(out_dir / "status.json", {"status": "failed", "error": f"{type(e).__name__}: {e}", "overrides": overrides})
        raise
    return results["objective"]["value"]


if __name__ == "__main__":
    main()
