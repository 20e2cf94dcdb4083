"""emotrain: Hydra-configured fine-tuning of small transformer encoders for emotion classification."""

__version__ = "0.1.0"
