"""The model/ directory of a run: a Hugging Face model folder of the trained encoder, plus emotrain's heads and facts.

    config.json, model.safetensors      the fine-tuned encoder: AutoModel.from_pretrained(DIR) loads it
    tokenizer.json, tokenizer_config.json, ...   its tokenizer: AutoTokenizer.from_pretrained(DIR)
    emotrain_heads.safetensors           one linear head per task (heads.TASK.weight / .bias)
    emotrain_model.json                  tasks, labels, thresholds, pooling, max length, preprocessing, provenance
    README.md                            the model card (written by the run, see emotrain.model_card)

`export_model` writes it from a checkpoint; `load_exported_model` rebuilds the whole model from it (the
inference side's PyTorch engine and emotrain-export read it). Folders written before format 2 kept
every weight, heads included, in model.safetensors under `encoder.` / `heads.` names; they still load.
The model facts (tasks, pooling, dropout, max length, preprocessing, primary task, backbone) come from
the checkpoint's `model_info`; checkpoints written before it existed fall back to their saved config.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

from emotrain.checkpointing import FORMAT_VERSION, check_state_dict, read_checkpoint, resolve_checkpoint
from emotrain.console import FILE_ONLY
from emotrain.data.types import TaskSpec
from emotrain.errors import CheckpointError
from emotrain.io import publish_modes, write_json
from emotrain.reproducibility import library_versions
from emotrain.utils import json_safe, one_line

log = logging.getLogger("emotrain.checkpointing")

EXPORT_FORMAT = "emotrain-model"
EXPORT_META = "emotrain_model.json"
HEADS_FILE = "emotrain_heads.safetensors"
ENCODER_FILE = "model.safetensors"
# 2: the encoder's weights under its own names (a Hugging Face folder) and the heads in HEADS_FILE.
MODEL_DIR_VERSION = 2


def _cfg_get(cfg, dotted: str, default=None):
    """A value of an old checkpoint's saved config (checkpoints without model_info)."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


def model_facts(ckpt: Mapping) -> dict:
    """What the model/ directory and a bundle need to rebuild and feed the model: the checkpoint's model_info, or
    for older checkpoints the same facts read from their saved config."""
    info = dict(ckpt.get("model_info") or {})
    cfg = ckpt.get("hyperparameters") or {}
    tasks = ckpt.get("tasks") or []
    legacy = {
        "primary_task": _cfg_get(cfg, "data.primary_task") or (tasks[0].get("name") if tasks else None),
        "pooling": _cfg_get(cfg, "backbone.pooling", info.get("pooling") or "mean"),
        "dropout": _cfg_get(cfg, "trainer.dropout", info.get("dropout") if info.get("dropout") is not None else 0.1),
        "max_length": _cfg_get(cfg, "backbone.max_length"),
        "preprocess": _cfg_get(cfg, "data.preprocess", {}),
        "backbone": _cfg_get(cfg, "backbone.name"),
    }
    return {key: info[key] if info.get(key) is not None else legacy[key] for key in legacy}


def export_model(checkpoint_path, out_dir, tokenizer, *, thresholds: dict | None = None) -> Path:
    """The model/ folder (see the module docstring) of a checkpoint, written into `out_dir`.

    `checkpoint_path` may be a file, a checkpoints/ or a run directory (its best checkpoint if any, else last).
    `thresholds` ({task: [per-label threshold]}) overrides the checkpoint's own (tuned after training ends).
    """
    from safetensors.torch import save_file

    src = Path(checkpoint_path)
    if src.is_dir():
        try:
            src = resolve_checkpoint(src, "best")
        except CheckpointError:
            src = resolve_checkpoint(src, "last")
    ckpt = read_checkpoint(src, "cpu")
    if not ckpt.get("encoder_config"):
        raise CheckpointError(
            f"{src}: has no encoder_config (the model had no .encoder.config); cannot export a Hugging Face config.json"
        )
    state = ckpt.get("model")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{src}: has no model weights; use a checkpoint written by save_checkpoint")
    facts = model_facts(ckpt)
    extra = ckpt.get("extra") or {}
    meta = {
        "format": EXPORT_FORMAT,
        "format_version": MODEL_DIR_VERSION,
        "checkpoint_format_version": FORMAT_VERSION,
        "files": {"encoder": ENCODER_FILE, "heads": HEADS_FILE},
        "tasks": ckpt.get("tasks") or [],
        "primary_task": facts["primary_task"],
        "pooling": facts["pooling"],
        "dropout": facts["dropout"],
        "max_length": facts["max_length"],
        "preprocess": facts["preprocess"],
        "thresholds": thresholds if thresholds is not None else extra.get("thresholds"),
        "backbone": facts["backbone"],
        "source_checkpoint": str(src.resolve()),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "val_loss": ckpt.get("val_loss"),
        "val_metrics": ckpt.get("val_metrics"),
        "checkpoint_timestamp": ckpt.get("timestamp"),
        "exported_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": ckpt.get("git"),
        "versions": ckpt.get("versions"),
        "export_versions": library_versions(),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build everything in a staging dir next to out_dir, then move files in; emotrain_model.json goes last.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write_json(staging / "config.json", json_safe(ckpt["encoder_config"]))
        # clone(): safetensors refuses tensors that share storage (tied weights).
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        encoder = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
        heads = {k: v for k, v in tensors.items() if not k.startswith("encoder.")}
        save_file(encoder, str(staging / ENCODER_FILE), metadata={"format": "pt"})
        save_file(heads, str(staging / HEADS_FILE), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(staging))
        write_json(staging / EXPORT_META, json_safe(meta))
        publish_modes(staging)
        names = sorted((p for p in staging.iterdir() if p.name != EXPORT_META), key=lambda p: p.name) + [
            staging / EXPORT_META
        ]
        for p in names:
            target = out_dir / p.name
            if p.is_dir():
                if target.exists():
                    shutil.rmtree(target)
            os.replace(p, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s to %s", src, out_dir, extra=FILE_ONLY)
    return out_dir


def load_exported_model(directory):
    """Rebuild (MultiTaskModel in eval mode, tokenizer, meta) from an export_model directory, offline."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from emotrain.models.multitask import MultiTaskModel

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"exported model not found: {directory}; pass the directory export_model wrote")
    for name in (EXPORT_META, "config.json", ENCODER_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing; re-run export_model into {directory}")
    meta_path = directory / EXPORT_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError("no format marker")
        tasks = [TaskSpec.from_dict(t) for t in meta["tasks"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{meta_path}: unreadable or not an emotrain export ({type(e).__name__}: {one_line(e)[:120]}); re-run "
            "export_model"
        ) from None
    if not tasks:
        raise CheckpointError(f"{meta_path}: lists no tasks; re-run export_model")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
            encoder = AutoModel.from_config(config)
    except Exception as e:
        raise CheckpointError(
            f"{directory / 'config.json'}: cannot build the encoder ({type(e).__name__}: {one_line(e)[:160]}); "
            "re-run export_model"
        ) from None
    weights_path = directory / ENCODER_FILE
    heads_path = directory / HEADS_FILE
    split = int(meta.get("format_version") or 1) >= MODEL_DIR_VERSION
    if split and not heads_path.is_file():
        raise CheckpointError(f"{heads_path}: missing; re-run export_model into {directory}")
    state = {}
    files = [(weights_path, "encoder."), (heads_path, "")] if split else [(weights_path, "")]
    for path, prefix in files:
        try:
            state.update({prefix + k: v for k, v in load_file(str(path)).items()})
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{path}: unreadable weights (truncated or corrupt: {one_line(e)[:120]}); re-run export_model"
            ) from None
    heads_file = heads_path if split else weights_path
    heads = {k.split(".")[1] for k in state if k.startswith("heads.")}
    names = [t.name for t in tasks]
    if heads != set(names):
        raise CheckpointError(
            f"{heads_file}: heads {sorted(heads)} do not match the tasks {names} in {EXPORT_META}; re-run export_model"
        )
    for t in tasks:
        w = state.get(f"heads.{t.name}.weight")
        if w is None or w.shape[0] != t.num_labels:
            got = None if w is None else w.shape[0]
            raise CheckpointError(
                f"{heads_file}: head '{t.name}' has {got} outputs but {EXPORT_META} lists {t.num_labels} labels; "
                "re-run export_model"
            )
    model = MultiTaskModel(
        encoder, tasks, pooling=meta.get("pooling") or "mean", dropout=float(meta.get("dropout") or 0.0)
    )
    # AutoModel builds BERT with a pooler; drop it when the trained encoder had none (it is unused anyway).
    own = model.state_dict()
    if getattr(model.encoder, "pooler", None) is not None and not any(k.startswith("encoder.pooler.") for k in state):
        if all(k.startswith("encoder.pooler.") for k in own if k not in state):
            model.encoder.pooler = None
    try:
        check_state_dict(weights_path, model, state)
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{weights_path}: weights do not fit config.json ({one_line(e)[:160]}); re-run export_model"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{directory}: cannot load the tokenizer files ({type(e).__name__}: {one_line(e)[:120]}); re-run "
            "export_model"
        ) from None
    model.eval()
    return model, tokenizer, meta
