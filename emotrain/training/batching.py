"""Tokenise once, then batch with dynamic padding and (optionally) length grouping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from emotrain.data.types import Split, TaskSpec


@dataclass
class EncodedSplit(Dataset):
    """Token ids (unpadded) and targets of one split; an item is an index."""

    input_ids: list[np.ndarray]
    targets: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> int:
        return i

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode_texts(tokenizer, texts: list[str], max_length: int, chunk: int = 4096, on_chunk=None) -> list[np.ndarray]:
    """Token ids per text, truncated to max_length, no padding (fast tokenizer, batched); `on_chunk(n)` after
    each chunk."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(texts[start : start + chunk], truncation=True, max_length=max_length, padding=False)
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"])
        if on_chunk is not None:
            on_chunk(len(enc["input_ids"]))
    return out


def encode_split(tokenizer, split: Split, max_length: int) -> EncodedSplit:
    return EncodedSplit(input_ids=encode_texts(tokenizer, split.texts, max_length), targets=split.targets)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length texts.

    Each epoch: shuffle all indices, cut them into pools of `pool_batches` batches,
    sort each pool by length and cut it into batches, then shuffle the batch order.
    The epoch stays random while padding drops to almost nothing. Seeded by
    (seed, epoch) so a resumed run replays the same order.

    Data parallel (world_size > 1): `batch_size` is the per-rank batch. Every rank builds
    the same global batches of batch_size * world_size (exactly the batches of a single
    process with that batch size) and takes examples rank, rank + world_size, ... of each,
    so all ranks step together and see similar lengths. A rank whose share of the last
    global batch is empty gets that batch's first example as padding; `shares()` says how
    many real examples each of its batches holds (0 for padding) and the global batch size.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        shuffle: bool,
        group_by_length: bool,
        seed: int,
        pool_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = int(seed)
        self.pool_batches = pool_batches
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.rank, self.world_size = int(rank), int(world_size)
        self.global_batch_size = self.batch_size * self.world_size
        self.epoch = 0
        self.skip = 0  # batches of this epoch to skip (resuming inside it); reset by set_epoch
        self._cache: tuple[int, list[list[int]]] | None = None  # (epoch, global batches)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.global_batch_size)

    def batches(self) -> list[list[int]]:
        """This rank's batches of the epoch (all of them with world_size=1)."""
        out = self.global_batches()
        if self.world_size == 1:
            return out
        return [b[self.rank :: self.world_size] or b[:1] for b in out]

    def shares(self) -> list[tuple[int, int]]:
        """(real examples in this rank's batch, examples in the global batch), per batch of the epoch."""
        return [(len(b[self.rank :: self.world_size]), len(b)) for b in self.global_batches()]

    def global_batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        batches = self._global_batches()
        self._cache = (self.epoch, batches)
        return batches

    def _global_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        batch_size = self.global_batch_size
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            pool = batch_size * self.pool_batches if self.shuffle else n
            chunks = []
            for start in range(0, n, pool):
                part = order[start : start + pool]
                # stable sort keeps the shuffled order among equal lengths
                chunks.append(part[np.argsort(-self.lengths[part], kind="stable")])
            order = np.concatenate(chunks) if chunks else order
        batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
        if self.shuffle and self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        return iter(self.batches()[self.skip :])


class Collator:
    """Pads token ids to the longest text in the batch and stacks the targets."""

    def __init__(self, data: EncodedSplit, pad_token_id: int):
        self.data = data
        self.pad_token_id = int(pad_token_id)

    def __call__(self, indices: list[int]) -> dict:
        seqs = [self.data.input_ids[i] for i in indices]
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = s
            mask[row, : len(s)] = 1
        idx = np.asarray(indices)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "targets": {k: torch.from_numpy(v[idx]) for k, v in self.data.targets.items()},
            "indices": torch.from_numpy(idx),
        }


def make_loader(
    data: EncodedSplit,
    pad_token_id: int,
    batch_size: int,
    shuffle: bool,
    group_by_length: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """`batch_size` per rank; with world_size > 1 this rank's share of the global batches
    (see LengthGroupedBatchSampler)."""
    sampler = LengthGroupedBatchSampler(
        data.lengths, batch_size, shuffle, group_by_length, seed, rank=rank, world_size=world_size
    )
    # Its own generator: an iterator otherwise draws a base seed from the global torch RNG,
    # and then evaluations or cache fills would shift the dropout stream of training.
    generator = torch.Generator().manual_seed(int(seed))
    # Workers would only re-pad in-memory arrays: not worth a process each.
    return DataLoader(
        data, batch_sampler=sampler, collate_fn=Collator(data, pad_token_id), num_workers=0, generator=generator
    )


def targets_to_tensors(tasks: list[TaskSpec], targets: dict, device) -> dict[str, torch.Tensor]:
    return {t.name: targets[t.name].to(device, non_blocking=True) for t in tasks}
