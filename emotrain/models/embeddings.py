"""Train only the word-embedding rows of tokens that occur in the training data (`trainer.compact_embeddings`).

A row whose token never appears in a training batch (and the padding row, which nn.Embedding
never trains) has a zero gradient in every step: AdamW keeps its moments at zero and only
decays it by (1 - lr * weight_decay). Dense training still pays for it every step: a 30,522
x 384 gradient to zero-fill, its share of the clipping norm and a full AdamW pass over 11.7M
entries, most of them idle on a small dataset. `CompactWordEmbedding` keeps the rows that
train as the parameter and the rest in a fixed table that it decays after each optimiser
step (one multiply, skipped without weight decay): the same weights as dense training, to
float rounding. state_dict() and load_state_dict() use the plain `weight`, so checkpoints,
best-weight copies, resumes and exports do not change.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotrain.console import FILE_ONLY

log = logging.getLogger(__name__)


class CompactWordEmbedding(nn.Module):
    """nn.Embedding whose parameter holds only the rows in `train_rows`; see the module docstring."""

    def __init__(self, embedding: nn.Embedding, train_rows: torch.Tensor):
        super().__init__()
        weight = embedding.weight.detach()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = embedding.padding_idx
        self.rows = train_rows.to(weight.device)
        slot = torch.full((self.num_embeddings,), -1, dtype=torch.long, device=weight.device)
        slot[self.rows] = torch.arange(len(self.rows), device=weight.device)
        # Plain attributes, not buffers: kept out of state_dict (the hooks write the merged `weight`)
        # and out of data-parallel buffer syncs.
        self.slot = slot
        self.fixed = weight.clone()  # rows that do not train; its copies of the trained rows go unused
        self.trained = nn.Parameter(weight[self.rows].clone(), requires_grad=embedding.weight.requires_grad)
        self.register_state_dict_post_hook(_write_merged_weight)
        self.register_load_state_dict_pre_hook(_read_merged_weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        slot = self.slot[input_ids]
        trained = F.embedding(slot.clamp(min=0), self.trained)
        fixed = F.embedding(input_ids, self.fixed)
        return torch.where((slot >= 0).unsqueeze(-1), trained, fixed)

    def merged_weight(self) -> torch.Tensor:
        weight = self.fixed.clone()
        weight[self.rows] = self.trained.detach()
        return weight

    def follow_weight_decay(self, optimizer: torch.optim.Optimizer) -> None:
        """Decay the fixed rows as AdamW decays every row: after each optimiser step that was taken."""

        def after_step(opt, args, kwargs) -> None:
            found_inf = getattr(opt, "found_inf", None)  # set by a GradScaler around a fused step it skips
            if found_inf is not None and float(found_inf) > 0:
                return
            # Looked up each time: optimizer.load_state_dict (a resume) replaces the group dicts.
            group = next(g for g in opt.param_groups if any(p is self.trained for p in g["params"]))
            factor = 1.0 - float(group["lr"]) * float(group["weight_decay"])
            if factor != 1.0:
                self.fixed.mul_(factor)

        optimizer.register_step_post_hook(after_step)

    def extra_repr(self) -> str:
        rows = f"training {len(self.rows)} rows"
        return f"{self.num_embeddings}, {self.embedding_dim}, {rows}, padding_idx={self.padding_idx}"


def _write_merged_weight(module: CompactWordEmbedding, state_dict: dict, prefix: str, local_metadata) -> None:
    del state_dict[prefix + "trained"]
    state_dict[prefix + "weight"] = module.merged_weight()


def _read_merged_weight(
    module: CompactWordEmbedding,
    state_dict: dict,
    prefix: str,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
) -> None:
    weight = state_dict.pop(prefix + "weight", None)
    if weight is None:
        return  # load_state_dict reports the missing key
    if tuple(weight.shape) != (module.num_embeddings, module.embedding_dim):
        error_msgs.append(
            f"size mismatch for {prefix}weight: copying a param with shape {tuple(weight.shape)}, the model has "
            f"{(module.num_embeddings, module.embedding_dim)}"
        )
        return
    weight = weight.detach().to(module.fixed.device, module.fixed.dtype)
    module.fixed = weight.clone()
    state_dict[prefix + "trained"] = weight[module.rows]


def compact_word_embeddings(encoder: nn.Module, train_input_ids: list[np.ndarray]) -> CompactWordEmbedding | None:
    """Swap the encoder's word embeddings for a CompactWordEmbedding over the training tokens.

    Returns None (and changes nothing) when the input embedding is not a plain nn.Embedding
    or its weight is shared with another parameter (e.g. tied to an output layer).
    """
    embedding = encoder.get_input_embeddings()
    if (
        type(embedding) is not nn.Embedding
        or embedding.max_norm is not None
        or embedding.sparse
        or embedding.scale_grad_by_freq
    ):
        log.info(
            "trainer.compact_embeddings: the input embedding is a %s, not a plain nn.Embedding; all rows train",
            type(embedding).__name__,
        )
        return None
    shared = [n for n, p in encoder.named_parameters(remove_duplicate=False) if p is embedding.weight]
    if len(shared) > 1:
        log.info("trainer.compact_embeddings: the word embeddings are shared (%s); all rows train", ", ".join(shared))
        return None
    ids = np.unique(np.concatenate(train_input_ids)) if train_input_ids else np.zeros(0, dtype=np.int64)
    rows = torch.from_numpy(ids.astype(np.int64))
    if embedding.padding_idx is not None:
        rows = rows[rows != embedding.padding_idx]  # nn.Embedding never trains the padding row
    compact = CompactWordEmbedding(embedding, rows)
    encoder.set_input_embeddings(compact)
    log.info(
        "word embeddings: %d of %d rows train (the tokens of the training data; trainer.compact_embeddings)",
        len(rows),
        compact.num_embeddings,
        extra=FILE_ONLY,
    )
    return compact
