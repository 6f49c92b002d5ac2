"""Full-catalogue softmax cross-entropy computed in row chunks: never more than (C, V) logits at once.

    loss = 1/M sum_m [ logsumexp_{v >= S}(z_mv) - z_{m,y_m} ],   z = T E^T + b,   T (M, H), E (V, H), b (V,)

with the S leading special ids excluded (their logits are -inf in `SeqRecommender.catalogue_logits`, so
they add exp(-inf) = 0 to every softmax and get zero gradient; here their columns are simply not computed).
It equals `F.cross_entropy(logits.masked_fill(special, -inf), y)` but the (M, V) logits (M = 128 x 200
labelled positions in SASRec+, V = 3,418 on ML-1M: 350 MB in fp32) are never materialised. The forward keeps
only T, E, b, y and the per-row logsumexp (M,); the backward recomputes each chunk's logits:

    g = (softmax(z_c) - onehot(y_c)) * dloss / M      (C, V)
    dT_c = g E     dE += g^T T_c     db += g.sum(0)

Chunk size: C rows such that one (C, V) fp32 block is at most `budget_bytes` (default 16 MiB). glibc serves
blocks above its mmap threshold (dynamic, at most 32 MiB) with a fresh mmap and unmaps them on free, so every
large temporary costs page faults and zeroing in the kernel at each step; blocks below 32 MiB come back from
the heap and are reused. 16 MiB (1,227 rows at V = 3,418; 21 chunks for SASRec+'s 25,600 rows) keeps the
chunk's temporaries below that with room to spare, and keeps the chunks few: each chunk runs ~10 small
multi-threaded ops, whose thread synchronisation costs CPU time on a busy machine (measured on the project's
shared CPU: 8 MiB chunks cost +33 % CPU per step over 16 MiB with 2 threads, the same with 1 thread;
benchmarks/RESULTS.md "Chunked full-catalogue cross-entropy").

Autocast (bf16/fp16): like torch's own path (a Linear decoder under autocast, then cross-entropy promoted
to fp32), the logits matmul runs in the autocast dtype, softmax/logsumexp in fp32 (fp64 for an fp64 model), and the gradient of the
logits is cast back to the autocast dtype for the two backward matmuls; dE and db are accumulated over
chunks in fp32 and returned in the parameters' dtype.
Shape legend: M rows (labelled positions), H hidden, V vocabulary (specials + items), C rows per chunk.
"""

from __future__ import annotations

import torch

DEFAULT_BUDGET_BYTES = 16 * 2**20  # one (C, V) fp32 logits block; see the module docstring


def chunk_rows(vocab_size: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Rows per chunk so that one (C, V) fp32 block fits in `budget_bytes` (at least 1 row)."""
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be > 0, got {budget_bytes!r}")
    return max(1, budget_bytes // (4 * vocab_size))


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16 logits (as autocast's cross-entropy), else their own dtype (fp32, fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype torch's Linear would multiply in here: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class _ChunkedCatalogueCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, weight, bias, targets, num_special, chunk, dtype):  # noqa: ANN001, ANN205
        # explicit casts below; autocast off so nothing is cast twice (the backward runs without it anyway)
        with torch.autocast(t.device.type, enabled=False):
            E, b = weight[num_special:].to(dtype), bias[num_special:].to(dtype)  # (V - S, H), (V - S,)
            tc = t.to(dtype)  # (M, H)
            y = targets - num_special  # (M,) column among the items
            lse = torch.empty(len(t), dtype=_softmax_dtype(dtype), device=t.device)  # (M,)
            picked = torch.empty_like(lse)  # (M,)
            for i in range(0, len(t), chunk):
                z = torch.addmm(b, tc[i : i + chunk], E.t()).to(lse.dtype)  # (C, V - S)
                lse[i : i + chunk] = torch.logsumexp(z, dim=1)
                picked[i : i + chunk] = z.gather(1, y[i : i + chunk, None])[:, 0]
            loss = (lse - picked).mean()
        ctx.save_for_backward(t, weight, bias, y, lse)
        ctx.num_special, ctx.chunk, ctx.dtype = num_special, chunk, dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        t, weight, bias, y, lse = ctx.saved_tensors
        S, chunk, dtype = ctx.num_special, ctx.chunk, ctx.dtype
        with torch.autocast(t.device.type, enabled=False):
            E, b, tc = weight[S:].to(dtype), bias[S:].to(dtype), t.to(dtype)  # (V - S, H), (V - S,), (M, H)
            scale = grad_loss.to(lse.dtype) / len(t)  # d loss / d z carries the mean's 1/M
            grad_t = torch.empty_like(tc)  # (M, H)
            grad_E = torch.zeros(weight.shape, dtype=_softmax_dtype(weight.dtype), device=t.device)  # (V, H)
            grad_b = torch.zeros(bias.shape, dtype=_softmax_dtype(bias.dtype), device=t.device)  # (V,)
            for i in range(0, len(t), chunk):
                rows = tc[i : i + chunk]  # (C, H)
                z = torch.addmm(b, rows, E.t()).to(lse.dtype)  # (C, V - S)
                g = z.sub_(lse[i : i + chunk, None]).exp_()  # softmax, in place
                g[torch.arange(len(rows), device=g.device), y[i : i + chunk]] -= 1.0
                g.mul_(scale)
                grad_b[S:] += g.sum(0)
                g = g.to(dtype)
                grad_t[i : i + chunk] = g @ E  # (C, H)
                grad_E[S:] += g.t() @ rows  # (V - S, H)
        return grad_t.to(t.dtype), grad_E.to(weight.dtype), grad_b.to(bias.dtype), None, None, None, None


def chunked_catalogue_ce(
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    num_special: int,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """Mean cross-entropy of rows `t` (M, H) over the catalogue scores t @ weight^T + bias (V,), ids below
    `num_special` excluded; equal to `F.cross_entropy` of the masked (M, V) logits, in (C, V) chunks.

    `weight` may be tied (the item embeddings): its gradient adds to the shared parameter's. Targets must be
    item ids (>= num_special, < V): a special target would have an infinite loss.
    """
    V = weight.shape[0]
    if t.ndim != 2 or t.shape[1] != weight.shape[1] or bias.shape != (V,) or targets.shape != t.shape[:1]:
        raise ValueError(
            f"expected t (M, H), weight (V, H), bias (V,), targets (M,); got {tuple(t.shape)}, "
            f"{tuple(weight.shape)}, {tuple(bias.shape)}, {tuple(targets.shape)}"
        )
    if len(targets) and not bool(((targets >= num_special) & (targets < V)).all()):
        bad = targets[(targets < num_special) | (targets >= V)][0]
        raise ValueError(f"target id {int(bad)} is not an item id ({num_special}..{V - 1})")
    chunk = chunk_rows(V, budget_bytes)
    return _ChunkedCatalogueCE.apply(t, weight, bias, targets, num_special, chunk, _compute_dtype(t))
