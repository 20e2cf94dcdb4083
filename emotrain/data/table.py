"""data=table: the user's files -> DataBundle (readers in emotrain.data.readers, labels in emotrain.data.labels).

One or more label tasks (`+data.tasks.NAME.column=COL`); without val/test files a seeded
stratified split of the training file; the text column never a label column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from emotrain.data.labels import build_task, task_options, text_cells
from emotrain.data.readers import read_table, resolve_path
from emotrain.data.splitting import stratified_holdout
from emotrain.data.types import DataBundle, Split, TaskSpec
from emotrain.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def load_table(cfg: Any, root_dir: Path) -> DataBundle:
    """data=table: `cfg` is the data node (TableDataConfig fields, attribute access)."""
    tasks_cfg = cfg.tasks
    if isinstance(tasks_cfg, DictConfig):
        tasks_cfg = OmegaConf.to_container(tasks_cfg, resolve=True)
    if not tasks_cfg:
        raise DataError(
            "data.tasks is empty: name at least one label column, e.g. +data.tasks.emotion.column=label "
            "(and +data.tasks.emotion.multilabel=true for cells holding several labels)"
        )
    options = [task_options(str(name), raw) for name, raw in tasks_cfg.items()]

    files = {"train": cfg.train_file, "val": cfg.get("val_file"), "test": cfg.get("test_file")}
    paths = {split: resolve_path(f, root_dir) for split, f in files.items() if f not in (None, "")}
    for held in ("val", "test"):  # scoring on the training file would report memorised answers as skill
        if held in paths and paths[held].exists() and paths["train"].exists() and paths[held].samefile(paths["train"]):
            raise DataError(
                f"data.{held}_file and data.train_file are the same file ({paths[held]}): its scores would measure "
                f"memorisation; give a separate file, or leave data.{held}_file unset to hold out data.{held}_fraction"
            )
    tables = {
        split: read_table(
            path,
            fmt=cfg.format,
            sep=cfg.get("sep"),
            header=bool(cfg.header),
            encoding=str(cfg.encoding),
            key=f"data.{split}_file",
        )
        for split, path in paths.items()
    }
    text_column = str(cfg.text_column)
    for opts in options:
        if opts.column == text_column:
            raise DataError(
                f"data.text_column and {opts.key}.column both name column {text_column!r}: the model would read its "
                "own "
                "answer; point data.text_column at the text and the task at its label column"
            )
    texts = {split: text_cells(table, text_column) for split, table in tables.items()}

    specs: list[TaskSpec] = []
    targets: dict[str, dict[str, np.ndarray]] = {split: {} for split in tables}
    for opts in options:
        spec, by_split = build_task(opts, tables)
        specs.append(spec)
        for split, arr in by_split.items():
            targets[split][opts.name] = arr
    splits = {split: Split(texts[split], targets[split], name=split, ids=tables[split].row_ids()) for split in tables}
    sources = {split: str(path) for split, path in paths.items()}

    # Held-out splits carved from the training file; fractions are of the whole file.
    stratify_on = cfg.get("primary_task") or specs[0].name
    if stratify_on not in {s.name for s in specs}:
        raise DataError(
            f"data.primary_task={stratify_on!r} names no task; tasks are {', '.join(s.name for s in specs)}"
        )
    val_fraction, test_fraction = float(cfg.val_fraction), float(cfg.test_fraction)  # ranges: validate_data_config
    seed = int(cfg.split_seed)
    carve_test = "test" not in splits and test_fraction > 0
    carve_val = "val" not in splits
    if carve_val and val_fraction <= 0:
        raise DataError(
            "no validation split: set data.val_file, or data.val_fraction above 0 to hold out part of the training file"
        )
    train_source = sources["train"]
    if carve_test:
        splits["train"], splits["test"] = stratified_holdout(
            splits["train"], specs, test_fraction, seed, stratify_on=stratify_on, held_name="test", source=train_source
        )
        sources["test"] = f"{train_source} (held out: test_fraction={test_fraction:g}, split_seed={seed})"
    if carve_val:
        remaining = val_fraction / (1.0 - test_fraction) if carve_test else val_fraction
        splits["train"], splits["val"] = stratified_holdout(
            splits["train"],
            specs,
            remaining,
            seed,
            stratify_on=stratify_on,
            held_name="val",
            source=train_source,
            shown_fraction=val_fraction,
        )
        sources["val"] = f"{train_source} (held out: val_fraction={val_fraction:g}, split_seed={seed})"

    return DataBundle(
        tasks=specs,
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        primary_task=stratify_on,
        sources={split: sources[split] for split in SPLIT_NAMES if split in sources},
    )


__all__ = ["load_table", "resolve_path"]
