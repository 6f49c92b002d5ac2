"""Batch sources: the data side of the training loop, addressable by (epoch, batch index).

Batch `i` of epoch `e` is a pure function of (seed, e, i): the epoch's order comes from a generator seeded
by (seed, e), and any per-batch randomness (dynamic masking) from a generator seeded by (seed, e, i). So a
resumed run reads exactly the batches the interrupted run would have read, without replaying the epoch, and
the same global batch is produced whatever the number of processes: each rank keeps its slice of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch

Batch = dict[str, torch.Tensor]
Collate = Callable[[Batch, torch.Generator], Batch]

_SHUFFLE_STREAM, _BATCH_STREAM = 0, 1  # keep the epoch-order and per-batch generators independent
# Batch keys whose tensor belongs to the whole batch, not to one example: every rank gets it whole. A name,
# not a shape test, decides: K sampled negatives would pass for a batch dimension whenever K == B.
SHARED_KEYS = frozenset({"negatives", "negative_log_expected"})


class BatchSource(Protocol):
    """What `train` reads from. `batches` yields this rank's slice of each global batch of `epoch`,
    starting at global batch index `start`; `num_batches(epoch)` counts global batches in the epoch."""

    def num_batches(self, epoch: int) -> int: ...

    def batches(self, epoch: int, start: int, rank: int, world_size: int) -> Iterator[Batch]: ...


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints; numpy's SeedSequence mixes them so that nearby tuples,
    e.g. (seed, epoch, 1) and (seed, epoch + 1, 0), give unrelated streams."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def shard(batch: Batch, rank: int, world_size: int, shared: frozenset[str] = SHARED_KEYS) -> Batch:
    """Rows [rank * B / W, (rank + 1) * B / W) of every per-example tensor; B must divide evenly so that the
    mean of the ranks' per-example mean losses equals the global batch's mean loss. Tensors under a key in
    `shared` belong to the whole batch (e.g. one set of sampled negatives) and go whole to every rank."""
    if world_size == 1:
        return batch
    sizes = {k: v.shape[0] if v.dim() else None for k, v in batch.items() if k not in shared}
    if not sizes:
        raise ValueError(
            f"a batch needs at least one per-example tensor to be sharded, got keys {sorted(batch)}"
        )
    size = next(iter(sizes.values()))
    if size is None or any(s != size for s in sizes.values()):
        raise ValueError(
            f"every per-example batch tensor must have the same first dimension to be sharded, got {sizes}; "
            f"tensors shared by the whole batch must use one of the keys {sorted(shared)}"
        )
    if size % world_size != 0:
        raise ValueError(
            f"global batch of {size} rows does not split evenly over {world_size} processes; "
            "use a batch_size divisible by the world size and drop_last=True"
        )
    per = size // world_size
    return {k: v if k in shared else v[rank * per : (rank + 1) * per] for k, v in batch.items()}


class TensorBatchSource:
    """Batches of rows from equally long tensors (`tensors[k].shape[0] == N` for every k).

    `batch_size` is the global batch (all processes together). `collate(rows, generator)` turns the raw rows
    of one global batch into the model's batch, e.g. dynamic masking; `generator` is seeded by
    (seed, epoch, batch index), and every tensor it returns must keep one row per example, except those under
    a key of `SHARED_KEYS` (e.g. "negatives": one set of sampled items shared by the batch).

    Length bucketing: with `lengths` (N,) and `bucket_batches` = C > 0, each epoch's shuffled order is cut
    into chunks of C batches, each chunk is sorted by length, and then the order of the whole batches is
    shuffled again. Every row is still read once per epoch and batches mix rows from all over the data, but
    rows in a batch have similar lengths, so a model that trims padding shared by the whole batch
    (`SeqRecommender.forward`) does far less work on padding.
    """

    def __init__(
        self,
        tensors: Batch,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        collate: Collate | None = None,
        drop_last: bool = True,
        lengths: torch.Tensor | None = None,
        bucket_batches: int = 0,
    ) -> None:
        if not tensors:
            raise ValueError("tensors must hold at least one tensor")
        if bucket_batches < 0:
            raise ValueError(f"bucket_batches must be >= 0, got {bucket_batches!r}")
        if bucket_batches and lengths is None:
            raise ValueError("bucket_batches needs the rows' lengths (lengths=...)")
        rows = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"all tensors must have the same number of rows, got {rows}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.tensors = tensors
        self.num_rows = next(iter(rows.values()))
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.collate = collate
        self.drop_last = drop_last
        if lengths is not None and tuple(lengths.shape) != (self.num_rows,):
            raise ValueError(f"lengths must have shape ({self.num_rows},), got {tuple(lengths.shape)}")
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self._cached_order: tuple[int, torch.Tensor] | None = None  # (epoch, order): one randperm per epoch
        if self.num_batches(0) == 0:
            raise ValueError(f"{self.num_rows} rows make no batch of {batch_size} with drop_last=True")

    def num_batches(self, epoch: int) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> torch.Tensor:
        """The row order of `epoch`: a permutation seeded by (seed, epoch), or 0..N-1 without shuffling."""
        if not self.shuffle:
            return torch.arange(self.num_rows)
        if self._cached_order is None or self._cached_order[0] != epoch:
            generator = seeded_generator(self.seed, _SHUFFLE_STREAM, epoch)
            order = torch.randperm(self.num_rows, generator=generator)  # (N,)
            if self.bucket_batches:
                order = self._bucketed(order, generator)
            self._cached_order = (epoch, order)
        return self._cached_order[1]

    def _bucketed(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sort each chunk of `bucket_batches` batches of `order` by length, then shuffle whole batches."""
        chunk = self.bucket_batches * self.batch_size
        pieces = []
        for start in range(0, self.num_rows, chunk):
            rows = order[start : start + chunk]  # (<= chunk,)
            pieces.append(rows[torch.argsort(self.lengths[rows], stable=True)])
        order = torch.cat(pieces)  # (N,)
        full = self.num_rows // self.batch_size * self.batch_size
        blocks = order[:full].view(-1, self.batch_size)  # (N // B, B)
        blocks = blocks[torch.randperm(len(blocks), generator=generator)]
        return torch.cat([blocks.flatten(), order[full:]])  # (N,); a partial last batch stays last

    def batch(self, epoch: int, index: int) -> Batch:
        """Global batch `index` of `epoch`, collated."""
        if not 0 <= index < self.num_batches(epoch):
            raise IndexError(
                f"batch index {index} out of range [0, {self.num_batches(epoch)}) in epoch {epoch}"
            )
        rows = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]  # (B,)
        raw = {k: v[rows] for k, v in self.tensors.items()}
        if self.collate is None:
            return raw
        return self.collate(raw, seeded_generator(self.seed, _BATCH_STREAM, epoch, index))

    def batches(self, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        for index in range(start, self.num_batches(epoch)):
            yield shard(self.batch(epoch, index), rank, world_size)
