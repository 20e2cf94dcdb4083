"""User-facing errors: one line naming the file / line / key and what to do."""


class EmotrainError(Exception):
    """An error caused by the user's input or config. Printed as one line, no traceback."""


class DataError(EmotrainError):
    """A data file is missing, malformed or inconsistent."""


class ConfigError(EmotrainError):
    """A config value is impossible (beyond what the schema can check)."""


class CheckpointError(EmotrainError):
    """A checkpoint or bundle file cannot be used."""


class TrainingDiverged(EmotrainError):
    """Too many consecutive non-finite losses; metrics.json (status "diverged") keeps the results so far."""


class TrainingInterrupted(EmotrainError):
    """Ctrl-C: an `interrupted` checkpoint was saved at the last optimiser step (`checkpoint`)."""

    def __init__(self, message: str, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


class MissingDependencyError(EmotrainError):
    """A part of emotrain needs packages this install lacks (e.g. training in an inference-only install)."""


# Import name -> what pip installs. Training and export need all of these; serving an ONNX bundle none.
TRAINING_PACKAGES = {"torch": "torch", "transformers": "transformers", "hydra": "hydra-core", "omegaconf": "omegaconf"}


def require_packages(purpose: str, packages: dict[str, str] = TRAINING_PACKAGES) -> None:
    """Raise MissingDependencyError naming what to install when any of `packages` is not importable."""
    import importlib.util

    def importable(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ImportError:  # an import hook refusing the module (a locked-down deployment)
            return False

    missing = [pip_name for module, pip_name in packages.items() if not importable(module)]
    if missing:
        torch_first = "pip install torch==2.13.0 (the CPU build; see the README), then " if "torch" in missing else ""
        raise MissingDependencyError(
            f"{purpose} needs {', '.join(missing)}, which this install lacks (an inference-only install serves "
            f"ONNX bundles only); install them with: {torch_first}pip install emotrain (without --no-deps)"
        )
