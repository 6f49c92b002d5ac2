"""Losses and top-K that scale with the catalogue: sampled softmax with logQ correction, gBCE, chunked top-K.

At 10^6 items the full softmax's (M, V) logits no longer fit (25,600 labelled positions x 10^6 items x 4
bytes = 100 GB), and neither does a (users x V) score matrix. Here:
  - `NegativeSampler` draws K negatives per sequence or for the whole batch (uniform, popularity-
    proportional, or a mix of both) with their log expected counts log(K q_j), the logQ term;
  - `sequence_sampled_logits` (one set per sequence) and `sampled_logits` (one set for the batch) score
    only the targets and those K negatives: (M,) and (M, K), never (M, V);
  - `sampled_softmax_loss` (Bengio & Senecal 2008; Jean et al. 2015; Yi et al. 2019) and `gbce_loss`
    (Petrov & Macdonald 2023) turn them into per-label losses;
  - `topk_over_catalogue` ranks the catalogue chunk by chunk, holding at most (B, chunk) scores and
    top-k'ing only the rows a chunk can change.
Shape legend: B queries (users), M labelled positions, H hidden, V catalogue rows (ids), K negatives,
C chunk, k results per query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from seqbert.data.vocab import FIRST_ITEM_ID

NEGATIVES = ("uniform", "popularity", "mixed")


def count_items(sequences: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """Interactions per id (vocab_size,) in the training sequences: the popularity that negatives follow."""
    if not sequences:
        return np.zeros(vocab_size, dtype=np.int64)
    return np.bincount(
        np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]), minlength=vocab_size
    )


class NegativeSampler:
    """K negatives for a batch or for each sequence, drawn with replacement from q over [first_id, vocab_size).

    uniform     q_j = 1 / N over the N items
    popularity  q_j = c_j / sum c (c = training counts, `count_items`): the distribution that in-batch
                negatives follow (Yi et al. 2019), drawn independently of the batch so log q is exact
    mixed       round(share * K) draws by popularity and the rest uniform (stratified, as in mixed negative
                sampling, Yang et al. 2020); the expected count of j is then K_u / N + K_p p_j
    `sample(generator)` returns the ids (K,) and log E[count of j in the draw] = log(K q_j) (K,): the logQ
    correction for `sampled_softmax_loss`. Items with c_j = 0 are never drawn by popularity.
    """

    def __init__(
        self,
        vocab_size: int,
        num_negatives: int,
        negatives: str = "uniform",
        item_counts: np.ndarray | torch.Tensor | None = None,
        mixed_share: float = 0.5,
        first_id: int = FIRST_ITEM_ID,
    ) -> None:
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        num_items = vocab_size - first_id
        if num_items < 1 or num_negatives < 1:
            raise ValueError(
                f"need >= 1 item and >= 1 negative, got {num_items} items, {num_negatives} negatives"
            )
        self.first_id, self.vocab_size, self.num_negatives = first_id, vocab_size, num_negatives
        share = {"uniform": 0.0, "popularity": 1.0, "mixed": mixed_share}[negatives]
        self.num_popular = round(share * num_negatives)
        self.num_uniform = num_negatives - self.num_popular
        expected = torch.full((num_items,), self.num_uniform / num_items, dtype=torch.float64)  # (N,)
        self.cdf = None
        if self.num_popular:
            if item_counts is None:
                raise ValueError(
                    f"negatives={negatives!r} needs item_counts (training counts per id, count_items)"
                )
            counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)
            if counts.shape != (vocab_size,) or bool((counts < 0).any()):
                raise ValueError(
                    f"item_counts must be {vocab_size} non-negative counts (one per id), got shape {tuple(counts.shape)}"
                )
            counts = counts[first_id:]  # (N,)
            if counts.sum() <= 0:
                raise ValueError("item_counts are all 0: no item can be drawn by popularity")
            self.cdf = counts.cumsum(0).numpy()  # (N,) float64: exact for counts up to 2^53
            expected += self.num_popular * counts / counts.sum()
        # log(K q_j); -inf where q_j = 0 (never drawn, so never looked up)
        self.log_expected = expected.log().float()  # (N,)

    def sample(
        self, generator: torch.Generator, sets: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> negatives (K,) int64 ids and their log expected counts (K,) float32; with `sets` = S, S
        independent draws (S, K) and (S, K) (one set per sequence)."""
        n = 1 if sets is None else sets
        parts = [
            torch.randint(0, self.vocab_size - self.first_id, (n, self.num_uniform), generator=generator)
        ]
        if self.num_popular:
            u = torch.rand(n, self.num_popular, generator=generator, dtype=torch.float64) * self.cdf[-1]
            # inverse CDF: the first item whose cumulative count exceeds u (zero-count items have no width);
            # numpy's searchsorted, as torch's (2.x, CPU) stalls for milliseconds on a busy thread pool
            rows = np.searchsorted(self.cdf, u.numpy(), side="right").clip(max=len(self.cdf) - 1)
            parts.append(torch.from_numpy(rows))
        rows = torch.cat(parts, dim=1)  # (S, K) 0-based item rows
        if sets is None:
            rows = rows[0]  # (K,)
        return rows + self.first_id, self.log_expected[rows]


def sampled_logits(
    queries: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits s = q . w_j + b_j of the targets (M,) and of K negatives shared by all rows (M, K); never (M, V).

    A negative equal to the row's target (an "accidental hit") gets -inf, so it drops out of both losses.
    """
    # one gather for both, so the backward scatters into one dense (V, H) gradient, not two
    ids = torch.cat([targets, negatives])  # (M + K,)
    w, b = weight[ids], bias[ids]  # (M + K, H), (M + K,)
    M = len(targets)
    pos = (queries * w[:M]).sum(-1) + b[:M]  # (M,)
    neg = queries @ w[M:].T + b[M:]  # (M, K)
    hit = negatives[None, :] == targets[:, None]  # (M, K)
    return pos, neg.masked_fill(hit, float("-inf"))


def sequence_sampled_logits(
    queries: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    sequence: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampled_logits` with one set of K negatives per sequence: (M,) and (M, K), never (M, K, H) or (M, V).

    queries (M, H) of the labelled positions, targets (M,), negatives (B, K): the set of each sequence,
    sequence (M,): the sequence (batch row) of each position, non-decreasing (row-major order, as
    `hidden[labels != IGNORE_INDEX]` gives). neg[m, k] = q_m . w_{negatives[sequence[m], k]} + b_..., with
    accidental hits at -inf. The positions are laid out per sequence, (B, P, H) with P the most labelled
    positions in one sequence, and scored by one batched matmul against the sequences' (B, K, H) negatives.
    """
    B, M = negatives.shape[0], len(targets)
    if M and bool((sequence[1:] < sequence[:-1]).any()):
        raise ValueError("sequence must be non-decreasing (labelled positions in row-major order)")
    ids = torch.cat([targets, negatives.reshape(-1)])  # (M + B K,): one gather, one dense scatter backward
    w, b = weight[ids], bias[ids]  # (M + B K, H), (M + B K,)
    pos = (queries * w[:M]).sum(-1) + b[:M]  # (M,)
    w_neg, b_neg = w[M:].view(B, -1, w.shape[1]), b[M:].view(B, -1)  # (B, K, H), (B, K)
    counts = torch.bincount(sequence, minlength=B)  # (B,)
    slot = (
        torch.arange(M, device=queries.device) - (counts.cumsum(0) - counts)[sequence]
    )  # (M,) place in its row
    laid = queries.new_zeros(B, int(counts.max()) if M else 0, queries.shape[1])  # (B, P, H)
    laid = laid.index_put((sequence, slot), queries)  # out of place, so autograd carries it
    neg = (torch.bmm(laid, w_neg.transpose(1, 2)) + b_neg[:, None, :])[sequence, slot]  # (M, K)
    hit = negatives[sequence] == targets[:, None]  # (M, K)
    return pos, neg.masked_fill(hit, float("-inf"))


def sampled_softmax_loss(
    pos: torch.Tensor, neg: torch.Tensor, log_expected: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-label sampled softmax with logQ correction (M,).

        loss = -s_t + log( exp(s_t) + sum_k exp(s_{j_k} - log(K q_{j_k})) )

    `pos` (M,) = s_t, `neg` (M, K) = s_{j_k} with accidental hits at -inf, `log_expected` (K,) or (M, K)
    = log(K q_{j_k}) (None: no correction). Why this is right: sum_k exp(s_{j_k}) / (K q_{j_k}) is an
    importance-sampling estimate, unbiased, of sum_{j != t} exp(s_j) (hits removed), so the denominator
    estimates the full partition function and the loss and its gradient converge to full softmax
    cross-entropy as K grows: consistent, not unbiased at finite K (Bengio & Senecal 2008). The
    target keeps its exact term exp(s_t); TF's default (`sampled_softmax_loss`, hits removed) also
    divides it by K q_t, whose limit drops the target from the denominator. With every item drawn once
    (q uniform, K = N: log(K q) = 0) this is exactly full softmax cross-entropy.
    """
    if log_expected is not None:
        neg = neg - log_expected  # (M, K); -inf hits stay -inf
    logits = torch.cat([pos[:, None], neg], dim=1)  # (M, 1 + K)
    return torch.logsumexp(logits, dim=1) - pos  # (M,)


def gbce_beta(num_items: int, num_negatives: int, t: float) -> float:
    """gBCE's exponent beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = K / (N - 1) (their eq. 10)."""
    if num_items < 2 or num_negatives < 1:
        raise ValueError(f"gBCE needs >= 2 items and >= 1 negative, got {num_items} items, {num_negatives}")
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce_prior_logit(num_items: int, num_negatives: int, t: float) -> float:
    """The one logit c that minimises gBCE for a model that scores every item alike: c = log(beta / K).

    With every logit at c a row's loss is (beta * softplus(-c) + K * softplus(c)) / (K + 1), whose
    derivative beta * (1 - sigmoid(c)) - K * sigmoid(c) vanishes at sigmoid(c) = beta / (beta + K), i.e.
    c = log(beta / K) (about -5 for K = 100, N = 200, t = 0.75). WHY it matters: unlike softmax, (g)BCE is
    not shift-invariant, so a fresh model (logits near 0, where K negatives outpull one positive) must
    first move every logit down to c. The output bias would learn that at Adam's lr per step (~1,000 steps),
    but the encoder gets there much faster by making every query t(h) one constant vector, aimed against a
    component that all item embeddings share (measured on a planted next-item task, 200 items, K = 100:
    the mean query held 99.97 % of the queries' norm and every logit sat at -5.1 +- 0.2) -- a plateau
    where the query no longer depends on the history, which those models did not leave in 600 steps
    (HR@10 0.06-0.09, chance 0.05; CE 0.975). `SeqRecommender` therefore starts its item biases at c for
    loss="gbce" (same task: HR@10 0.963 in 150 steps).
    """
    return math.log(gbce_beta(num_items, num_negatives, t) / num_negatives)


def gbce_loss(pos: torch.Tensor, neg: torch.Tensor, num_items: int, t: float) -> torch.Tensor:
    """Per-label gBCE (Petrov & Macdonald 2023, "gSASRec", eqs. 9-10) over K uniform negatives (M,).

        alpha = K / (N - 1)                          the negative sampling rate, N items
        beta  = alpha * (t * (1 - 1/alpha) + 1/alpha) in [alpha, 1] for t in [0, 1]
        loss  = -1/(K + 1) * ( log sigmoid(s+)^beta + sum_k log(1 - sigmoid(s-_k)) )
              = -1/(K + 1) * ( beta * logsigmoid(s+) + sum_k logsigmoid(-s-_k) )

    t = 0 gives plain BCE (beta = 1); t = 1 gives beta = alpha, which calibrates the sigmoid to the full
    softmax probabilities (their Theorem 1). Accidental hits (s- = -inf) contribute log 1 = 0. The official
    code (asash/gSASRec-pytorch, train_gsasrec.py) computes the same loss by replacing s+ with
    log(1 / (sigmoid(s+)^-beta - 1)), whose sigmoid is sigmoid(s+)^beta, in clamped float64 (tested equal).
    Start the item biases at `gbce_prior_logit` (see there why).
    """
    k = neg.shape[1]
    beta = gbce_beta(num_items, k, t)
    return -(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)) / (k + 1)  # (M,)


# ------------------------------------------------------------------------------------------ top-K


def _ordered(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (score descending, id ascending): ids first, then a stable sort by score."""
    by_id = ids.argsort(dim=1)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    by_score = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, by_score), ids.gather(1, by_score)


def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best columns of (B, C) scores by (score desc, column asc), k <= C.

    torch.topk returns the right values but picks arbitrarily among columns tied at the k-th value. One
    more value tells where that can matter: if the (k+1)-th equals the k-th, some tied column may have been
    left out, and such rows (rare with float scores) are redone with a stable sort, lowest column first.
    """
    if k == scores.shape[1]:  # every column is taken: nothing can be left out
        values, cols = scores.topk(k, dim=1)
        return values, cols
    values, cols = scores.topk(k + 1, dim=1)  # (B, k + 1)
    ambiguous = (values[:, k] == values[:, k - 1]) & torch.isfinite(values[:, k - 1])  # (B,)
    values, cols = values[:, :k], cols[:, :k]
    if ambiguous.any():
        rows = ambiguous.nonzero()[:, 0]
        fixed = scores[rows].sort(dim=1, descending=True, stable=True)
        values[rows], cols[rows] = fixed.values[:, :k], fixed.indices[:, :k]
    return values, cols


@torch.no_grad()
def topk_over_catalogue(
    queries: torch.Tensor,
    item_weights: torch.Tensor,
    item_bias: torch.Tensor | None,
    k: int,
    exclude: Sequence[np.ndarray | torch.Tensor] | None = None,
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of scores = queries @ item_weights^T + item_bias, chunk by chunk.

    queries (B, H), item_weights (V, H), item_bias (V,) or None; exclude[b]: ids row b must not get (e.g.
    its seen items; ids outside [0, V) are ignored). -> (scores (B, k), ids (B, k)), each row ordered by
    score descending, ties broken by the LOWER id first; when a row has fewer than k allowed ids the rest is
    (-inf, -1). Never holds more than (B, chunk) scores (plus (B, 2k) candidates): equal to a dense
    (B, V) matrix sorted stably (tests/tasks/test_catalogue.py). Scores must not be NaN.

    Cost at 1 M items, H 64, 1,000 queries, 1 thread: the (B, V) products (64 GFLOP) are the floor; the
    selection is kept near a row max per chunk, as a row is top-k'd only when its chunk max beats its
    current k-th score. chunk 2,048: a (1,000 x 2,048) block (8 MB) stays in L3 and its row max is cheap,
    while per-chunk overheads stay small; on the project's CPU 2,048 beat 1,024 / 4,096 / 32,768 for 16 to
    1,000 queries (1,000 queries: 2.6 s CPU vs 5.3 s for the old 32,768-chunk path without the skip).
    """
    B, V = queries.shape[0], item_weights.shape[0]
    if chunk < 1 or k < 1:
        raise ValueError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    if exclude is not None and len(exclude) != B:
        raise ValueError(f"exclude must hold one id list per query ({B}), got {len(exclude)}")
    device = queries.device
    best = torch.full((B, k), float("-inf"), dtype=queries.dtype, device=device)  # (B, k)
    best_ids = torch.full((B, k), -1, dtype=torch.long, device=device)  # (B, k)
    # excluded (row, id) pairs sorted by id, so each chunk finds its own with two binary searches
    ex_rows = ex_ids = None
    if exclude is not None:
        pairs = [
            (b, torch.as_tensor(np.asarray(e), dtype=torch.long).reshape(-1)) for b, e in enumerate(exclude)
        ]
        ex_ids = torch.cat([e for _, e in pairs]) if pairs else torch.zeros(0, dtype=torch.long)
        ex_rows = (
            torch.cat([torch.full((len(e),), b, dtype=torch.long) for b, e in pairs]) if pairs else ex_ids
        )
        order = ex_ids.argsort()
        ex_ids, ex_rows = ex_ids[order], ex_rows[order]
        # where each chunk's excluded ids start, by one numpy search (torch's stalls on a busy CPU pool)
        bounds = np.searchsorted(ex_ids.numpy(), [*range(0, V, chunk), V]).tolist()
        ex_ids, ex_rows = ex_ids.to(device), ex_rows.to(device)
    if item_bias is not None:
        # the bias as one more input column, [q, 1] . [w_j, b_j]: addmm would first copy the broadcast bias
        # into every (B, C) block, a whole extra pass over the scores (~15 % of the CPU time at 1 M items)
        queries = torch.cat([queries, queries.new_ones(B, 1)], 1)  # (B, H + 1)
    buffer = torch.empty(B * min(chunk, V), dtype=queries.dtype, device=device)
    for c, start in enumerate(range(0, V, chunk)):
        stop = min(start + chunk, V)
        w = item_weights[start:stop]  # (C, H)
        if item_bias is not None:
            w = torch.cat([w, item_bias[start:stop, None]], 1)  # (C, H + 1)
        # one buffer for every chunk: a fresh (B, C) allocation each time costs page faults (~30 % more CPU)
        scores = buffer[: B * (stop - start)].view(B, stop - start)  # (B, C)
        torch.mm(queries, w.T, out=scores)
        if ex_ids is not None:
            lo, hi = bounds[c], bounds[c + 1]
            scores[ex_rows[lo:hi], ex_ids[lo:hi] - start] = float("-inf")
        # only rows whose best score here beats their current k-th can change: a tie with the k-th loses to
        # the lower ids already held. After the first chunks that is a small share of the rows (about
        # k ln(V / C) of the V / C chunks per row for scores in random order), and a row max costs a tenth
        # of a row top-k on CPU, so most of the selection work is skipped; the scores are still all computed
        rows = (scores.amax(dim=1) > best[:, k - 1]).nonzero()[:, 0]  # (R,)
        if len(rows) == 0:
            continue
        everyone = len(rows) == B
        sub = scores if everyone else scores[rows]  # (R, C)
        values, cols = _chunk_topk(sub, min(k, stop - start))  # (R, k')
        held, held_ids = (best, best_ids) if everyone else (best[rows], best_ids[rows])  # (R, k)
        # merge: best holds lower ids than this chunk, and both are (score desc, id asc) ordered
        merged = _ordered(torch.cat([held, values], 1), torch.cat([held_ids, cols + start], 1))
        if everyone:
            best, best_ids = merged[0][:, :k], merged[1][:, :k]
        else:
            best[rows], best_ids[rows] = merged[0][:, :k], merged[1][:, :k]
    best_ids = best_ids.masked_fill(torch.isneginf(best), -1)
    return best, best_ids


@torch.no_grad()
def topk_histories(
    model,
    histories: Sequence[np.ndarray],
    k: int = 10,
    exclude_seen: bool = True,
    batch_size: int = 1024,
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A `SeqRecommender`'s top-k items for raw histories -> (scores (U, k), ids (U, k)), ids in the model's
    vocabulary (special ids never appear; -1 pads rows with fewer than k allowed items).

    Equal to `score_histories(model, histories)` with the seen items at -inf, sorted by (score desc, id asc),
    but holding at most (batch_size, chunk) scores instead of (U, V). Runs in eval mode.
    """
    # imported here: bert4rec imports this module's losses
    from seqbert.tasks.bert4rec import query_states

    was_training = model.training
    model.eval()
    weight = model.head.decoder.weight[FIRST_ITEM_ID:]  # (N, H): items only, specials never ranked
    bias = model.head.decoder.bias[FIRST_ITEM_ID:]  # (N,)
    out_scores, out_ids = [], []
    for lo in range(0, len(histories), batch_size):
        batch = histories[lo : lo + batch_size]
        queries = query_states(model, batch)  # (B, H)
        exclude = [np.asarray(h, dtype=np.int64) - FIRST_ITEM_ID for h in batch] if exclude_seen else None
        scores, rows = topk_over_catalogue(queries, weight, bias, k, exclude, chunk)  # (B, k)
        out_scores.append(scores)
        out_ids.append(torch.where(rows >= 0, rows + FIRST_ITEM_ID, rows))
    model.train(was_training)
    return torch.cat(out_scores), torch.cat(out_ids)
