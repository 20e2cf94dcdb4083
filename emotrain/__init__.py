"""emotrain: Hydra-configured fine-tuning of small transformer encoders for emotion classification.

From Python (no Hydra application needed; see emotrain.api)::

    import emotrain
    results = emotrain.train(["loss=focal", "trainer.epochs=2"], output_dir="runs/focal")  # metrics.json's dict
    engine = emotrain.load("runs/focal")                                                   # inference engine
    cfg = emotrain.compose(["backbone=tiny"])                                              # the CLI's config

Importing this package is cheap: torch, transformers and Hydra load only when a function needs them.
"""

from emotrain.api import compose, load, load_model, train
from emotrain.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EmotrainError,
    MissingDependencyError,
    TrainingDiverged,
    TrainingInterrupted,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EmotrainError",
    "MissingDependencyError",
    "TrainingDiverged",
    "TrainingInterrupted",
    "__version__",
    "compose",
    "load",
    "load_model",
    "train",
]
