"""One shared encoder, a pooling step, dropout and one linear head per task."""

from __future__ import annotations

import torch
from torch import nn

from emotrain.data.types import TaskSpec


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    # Mean over real tokens only; padding must not dilute the average.
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class MultiTaskModel(nn.Module):
    """Encoder + pooling + one head per task.

    forward(...) returns {task: logits}; multi-class heads are read with softmax,
    multi-label heads with a sigmoid per label (see `probabilities`).
    """

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.tasks = list(tasks)
        self.pooling = str(pooling)
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden, t.num_labels) for t in self.tasks})

    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def heads_forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.dropout(pooled)
        return {name: head(pooled) for name, head in self.heads.items()}

    def forward(self, input_ids, attention_mask, token_type_ids=None, pooled=None) -> dict[str, torch.Tensor]:
        # `pooled` lets a frozen-encoder cache skip the encoder entirely.
        if pooled is None:
            pooled = self.encode(input_ids, attention_mask, token_type_ids)
        return self.heads_forward(pooled)

    def probabilities(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.tasks:
            z = logits[t.name].float()
            out[t.name] = torch.sigmoid(z) if t.multilabel else torch.softmax(z, dim=-1)
        return out


def build_model(
    backbone_cfg, tasks: list[TaskSpec], *, vocab_size: int, dropout: float, root_dir, device
) -> MultiTaskModel:
    """The encoder of conf/backbone (offline) with one head per task, on `device`."""
    from emotrain.config import choice
    from emotrain.models.backbones import load_encoder

    encoder = load_encoder(backbone_cfg, root_dir, vocab_size=vocab_size, device_type=device.type)
    return MultiTaskModel(encoder, tasks, pooling=choice(backbone_cfg.pooling), dropout=dropout).to(device)
