"""Evaluation over a split: probabilities, losses and metrics, in input order."""

from __future__ import annotations

import numpy as np
import torch

from emotrain.console import progress
from emotrain.data.types import TaskSpec
from emotrain.training.batching import EncodedSplit, make_loader
from emotrain.training.metrics import evaluate_predictions
from emotrain.utils import is_better


@torch.no_grad()
def evaluate(
    model,
    criterion,
    data: EncodedSplit,
    tasks: list[TaskSpec],
    *,
    pad_token_id: int,
    batch_size: int,
    device,
    mp,
    thresholds=None,
    features=None,
    rank: int = 0,
    world_size: int = 1,
    progress_desc: str | None = None,
) -> tuple[dict, dict, dict]:
    """Returns (flat metrics, per-class tables, {task: probabilities [n, C]} in input order).

    `features`: cached pooled encoder outputs [n, H] (frozen encoder), used instead of the encoder.
    `progress_desc`: show progress under this name (emotrain.console.progress; None: silent).
    `rank`/`world_size` (data parallel; every rank must call this): rank r evaluates batches
    r, r + world_size, ... of the single-process batch list; probabilities and per-batch losses
    are summed across ranks (each entry comes from one rank, the others add exact zeros) and
    the losses are then accumulated in batch order, so every rank returns exactly the
    single-process result.
    """
    was_training = model.training
    model.eval()
    # Sorted by length, unshuffled: least padding; indices restore input order.
    loader = make_loader(data, pad_token_id, batch_size, shuffle=False, group_by_length=True, seed=0)
    batches = loader.batch_sampler.batches()
    n = len(data)
    probs = {t.name: np.zeros((n, t.num_labels), dtype=np.float32) for t in tasks}
    names = [t.name for t in tasks]
    batch_losses = np.zeros((len(batches), len(names)), dtype=np.float64)  # unweighted task loss per batch
    shown = progress(batches, desc=progress_desc or "", unit="batches", enabled=progress_desc is not None)
    for j, indices in enumerate(shown):
        if j % world_size != rank:
            continue
        batch = loader.collate_fn(indices)
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        targets = {k: v.to(device) for k, v in batch["targets"].items()}
        idx = batch["indices"].numpy()
        pooled = torch.from_numpy(features[idx]).to(device) if features is not None else None
        with mp.autocast():
            logits = model(ids, mask, pooled=pooled)
        _, parts = criterion({k: v.float() for k, v in logits.items()}, targets)
        for t, p in model.probabilities(logits).items():
            probs[t][idx] = p.cpu().numpy()
        for k, t in enumerate(names):
            batch_losses[j, k] = float(parts[t])
    model.train(was_training)
    if world_size > 1:
        from emotrain.distributed import all_reduce_sum

        for t in names:
            probs[t] = all_reduce_sum(torch.from_numpy(probs[t]).to(device)).cpu().numpy()
        batch_losses = all_reduce_sum(torch.from_numpy(batch_losses).to(device)).cpu().numpy()
    loss_sums = {t: 0.0 for t in names}
    for j, indices in enumerate(batches):  # the single-process summation order
        for k, t in enumerate(names):
            loss_sums[t] += float(batch_losses[j, k]) * len(indices)
    losses = {t: s / max(n, 1) for t, s in loss_sums.items()}
    total = criterion.reported(losses)
    flat, per_class = evaluate_predictions(tasks, probs, data.targets, losses, total, thresholds)
    return flat, per_class, probs


class EarlyStopping:
    """Stops after `patience` evaluations without an improvement larger than `min_delta`."""

    def __init__(self, patience: int | None, min_delta: float = 0.0, mode: str = "min"):
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode = mode
        self.best: float | None = None
        self.bad_evals = 0

    def improved(self, value: float) -> bool:
        return is_better(value, self.best, self.mode, self.min_delta)

    def step(self, value: float) -> bool:
        """Record one evaluation; True when training should stop."""
        if self.improved(value):
            self.best = value
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.bad_evals = int(state["bad_evals"])
