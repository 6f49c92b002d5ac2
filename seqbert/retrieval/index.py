"""Faiss indexes for candidate retrieval, in the style of faiss `contrib/`: NumPy in, NumPy out.

Names follow faiss: `xb` (n, d) database vectors, `xq` (nq, d) queries, `k` results per query,
`D` (nq, k) scores (inner products, larger = better; or squared L2 distances, smaller = better) and `I`
(nq, k) external ids, -1 where nothing was found. Every index built here is an `IndexIDMap` around the
factory index (or an `IndexShards` of them), so `I` always holds the caller's ids, never row numbers.

Factory strings are faiss' own (`faiss.index_factory`): "Flat" (exact), "IVF1024,Flat", "IVF1024,PQ16x8",
"HNSW32", "IVF4096_HNSW32,Flat", ... GPU is handled only at the edge (`IndexConfig.gpu`), and only when
the installed faiss has GPUs; nothing requires one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


@dataclass(frozen=True)
class IndexConfig:
    """How to build and search an index. `nprobe` / `ef_search` apply where the index has them."""

    factory: str = "Flat"  # faiss.index_factory description
    metric: str = "ip"  # "ip" (inner product) or "l2" (squared Euclidean distance)
    nprobe: int = 16  # IVF: inverted lists visited per query
    ef_search: int = 64  # HNSW: beam width at query time (faiss default is 16, too low for recall@100)
    train_size: int = 100_000  # rows sampled to train IVF/PQ; faiss wants >= 39 per centroid
    num_shards: int = 1  # > 1: an IndexShards of that many sub-indexes over contiguous slices of xb
    gpu: bool = False  # move to all GPUs when faiss has GPU support and sees one; else stay on CPU
    seed: int = 0  # training-sample draw

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ValueError(f"IndexConfig.factory must be a faiss factory string, got {self.factory!r}")
        if self.metric not in _METRICS:
            raise ValueError(f"IndexConfig.metric must be one of {sorted(_METRICS)}, got {self.metric!r}")
        for name in ("nprobe", "ef_search", "train_size", "num_shards"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"IndexConfig.{name} must be a positive integer, got {value!r}")


def _as_f32(x: np.ndarray | torch.Tensor, name: str, d: int | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{name} has dim {x.shape[1]}, the index has dim {d}")
    return x


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set `nprobe` (IVF) and `efSearch` (HNSW) through any IDMap/Shards wrappers, where they apply."""
    space = faiss.GpuParameterSpace() if _gpu_available() else faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:  # faiss raises for a parameter the index does not have (e.g. nprobe on HNSW)
            pass


def build_index(
    xb: np.ndarray | torch.Tensor, config: IndexConfig = IndexConfig(), ids: np.ndarray | None = None
) -> faiss.Index:
    """Train (on a sample of at most `train_size` rows) and fill an index over xb (n, d) with ids (n,).

    `ids` default to 0..n-1. With `num_shards > 1` one trained template is cloned per shard, so every
    shard shares the coarse quantizer / codebooks and the shards' results merge like one index's.
    """
    xb = _as_f32(xb, "xb")
    n, d = xb.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) to match xb, got {ids.shape}")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be unique")
    if config.num_shards > n:
        raise ValueError(f"IndexConfig.num_shards={config.num_shards} exceeds the {n} rows of xb")
    try:
        template = faiss.index_factory(d, config.factory, _METRICS[config.metric])
    except RuntimeError as e:
        raise ValueError(
            f"IndexConfig.factory={config.factory!r} is not a valid faiss factory string: {e}"
        ) from e
    if not template.is_trained:
        rng = np.random.default_rng(config.seed)
        sample = (
            xb if n <= config.train_size else xb[np.sort(rng.choice(n, config.train_size, replace=False))]
        )
        template.train(sample)
    bounds = np.linspace(0, n, config.num_shards + 1).astype(int)
    subs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sub = faiss.IndexIDMap(faiss.clone_index(template) if config.num_shards > 1 else template)
        sub.add_with_ids(xb[lo:hi], ids[lo:hi])
        subs.append(sub)
    index = subs[0] if config.num_shards == 1 else _shards(subs)
    set_search_params(index, config.nprobe, config.ef_search)
    return to_gpu(index) if config.gpu else index


def _shards(subs: list[faiss.Index]) -> faiss.Index:
    # successive_ids=False: each shard returns its own IDMap ids, which are already global
    shards = faiss.IndexShards(subs[0].d, True, False)
    for sub in subs:
        shards.add_shard(sub)
    shards.referenced_objects = subs  # keep the Python wrappers alive as long as the shards are
    return shards


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Copy to all visible GPUs when faiss has GPU support; otherwise return the CPU index unchanged.

    faiss has no GPU HNSW: an index that cannot be cloned to the GPU stays on the CPU.
    """
    if not _gpu_available():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if _gpu_available() and "Gpu" in type(index).__name__ else index


def search(
    index: faiss.Index,
    xq: np.ndarray | torch.Tensor,
    k: int,
    exclude: Sequence[set | np.ndarray | Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (D, I) per query; ids in `exclude[q]` (e.g. items the user has seen) never appear.

    Over-fetches k + |exclude[q]| results and, where approximate search still comes back short (IVF /
    HNSW can return fewer valid hits than asked), re-queries those rows with twice the depth, up to
    ntotal. A row keeps -1 ids (and the worst score) only when fewer than k ids are reachable at all.
    """
    xq = _as_f32(xq, "xq", index.d)
    nq = len(xq)
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be in [1, ntotal={index.ntotal}], got {k}")
    if exclude is None:
        return index.search(xq, k)
    if len(exclude) != nq:
        raise ValueError(f"exclude has {len(exclude)} entries, expected one per query ({nq})")
    banned = [np.fromiter(e, dtype=np.int64) if isinstance(e, set | frozenset) else np.asarray(e, np.int64)
              for e in exclude]  # fmt: skip
    worst = -np.inf if index.metric_type == faiss.METRIC_INNER_PRODUCT else np.inf
    D = np.full((nq, k), worst, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)  # noqa: E741 (faiss' name)
    todo = np.arange(nq)
    depth = min(k + max((len(b) for b in banned), default=0), index.ntotal)
    while todo.size:
        Dt, It = index.search(xq[todo], depth)
        short = []
        for row, q in enumerate(todo):
            keep = (It[row] >= 0) & ~np.isin(It[row], banned[q])
            got = np.flatnonzero(keep)[:k]
            D[q, : len(got)], I[q, : len(got)] = Dt[row, got], It[row, got]
            if len(got) < k and depth < index.ntotal:
                short.append(q)
        todo = np.asarray(short, dtype=np.int64)
        depth = min(2 * depth, index.ntotal)
    return D, I


def exact_search(
    xb: np.ndarray | torch.Tensor,
    xq: np.ndarray | torch.Tensor,
    k: int,
    metric: str = "ip",
    ids: np.ndarray | None = None,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force torch top-k: the reference every index is measured against.

    ip: D = xq xb^T (largest first); l2: D = ||q||^2 - 2 q.x + ||x||^2 (smallest first), as faiss reports.
    Queries go in blocks of `block` rows so the (block, n) score matrix stays bounded.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    xb_t = torch.from_numpy(_as_f32(xb, "xb"))  # (n, d)
    xq_t = torch.from_numpy(_as_f32(xq, "xq", xb_t.shape[1]))  # (nq, d)
    if not 1 <= k <= len(xb_t):
        raise ValueError(f"k must be in [1, n={len(xb_t)}], got {k}")
    D, I = [], []  # noqa: E741 (faiss' name)
    sq_b = (xb_t * xb_t).sum(1) if metric == "l2" else None  # (n,)
    for start in range(0, len(xq_t), block):
        q = xq_t[start : start + block]  # (b, d)
        s = q @ xb_t.T  # (b, n)
        if metric == "l2":
            s = (q * q).sum(1, keepdim=True) - 2 * s + sq_b  # (b, n) squared distances
            top = torch.topk(s, k, dim=1, largest=False)
        else:
            top = torch.topk(s, k, dim=1)
        D.append(top.values.numpy())
        I.append(top.indices.numpy())
    D_np, I_np = np.concatenate(D), np.concatenate(I).astype(np.int64)
    return D_np, (I_np if ids is None else np.asarray(ids, dtype=np.int64)[I_np])


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """One `.faiss` file; a sharded index becomes a directory of `shard_000.faiss`, ... (faiss cannot
    serialise IndexShards itself). GPU indexes are copied back to the CPU first."""
    path = Path(path)
    index = to_cpu(index)
    if isinstance(index, faiss.IndexShards):
        path.mkdir(parents=True, exist_ok=True)
        for i in range(index.count()):
            faiss.write_index(index.at(i), str(path / f"shard_{i:03d}.faiss"))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(path))
    return path


def load_index(path: str | Path, gpu: bool = False) -> faiss.Index:
    """Inverse of `save_index`; search parameters (nprobe, efSearch) are stored inside the index files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("shard_*.faiss"))
        if not files:
            raise FileNotFoundError(f"{path}: a sharded index directory needs shard_000.faiss, ...")
        index = _shards([faiss.read_index(str(f)) for f in files])
    elif path.exists():
        index = faiss.read_index(str(path))
    else:
        raise FileNotFoundError(f"{path}: no such index file or directory")
    return to_gpu(index) if gpu else index


def index_bytes(index: faiss.Index) -> int:
    """Serialised size in bytes: a close proxy for the index's resident memory."""
    index = to_cpu(index)
    if isinstance(index, faiss.IndexShards):
        return sum(faiss.serialize_index(index.at(i)).nbytes for i in range(index.count()))
    return faiss.serialize_index(index).nbytes
