"""A cross-attention reranker for recommendation: every candidate item reads the user's whole history.

One pass per user over the history followed by its K candidates (shape legend: B users, L history
columns, K candidates, H hidden, V vocabulary):

    tokens     h_1 ... h_L (left-padded, BERT4Rec's positions)   c_1 ... c_K (each at the query position)
    attention  history -> history only   (its encoding never depends on the candidates)
               c_k     -> history + c_k  (never another candidate: each is scored on its own)
    input c_k  = E[MASK] + P[query] + g * E[c_k]       (g a learned (H,) gate, 0 at the start)
    score_k    = t(hidden(c_k)) . E[c_k] + b[c_k]       (BERT4Rec's item head)

so the K scores equal K separate passes over "history + one candidate" (a test checks this), at the cost of
one pass over L + K tokens. Started from a trained BERT4Rec (`from_recommender`) with g = 0 every candidate
token is BERT4Rec's [MASK] and the scores are exactly BERT4Rec's (a test checks this too); training opens
the gate, so the candidate's identity enters the encoder and its representation is computed *with* the
history, layer by layer, instead of only being dotted with a history vector at the end. Training is
listwise: softmax cross-entropy over (target, N hard negatives drawn once from a retriever's top ranks).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqbert.data.vocab import FIRST_ITEM_ID, MASK_ID, PAD_ID
from seqbert.model.bert import Bert
from seqbert.model.heads import MLMHead
from seqbert.tasks.bert4rec import shared_left_padding


@dataclass
class RerankerOutput:
    loss: torch.Tensor | None
    scores: torch.Tensor  # (B, K)


class CrossRecReranker(nn.Module):
    def __init__(self, bert: Bert, head: MLMHead, max_len: int) -> None:
        super().__init__()
        if bert.config.causal:
            raise ValueError("the cross-attention reranker needs a bidirectional encoder (causal=False)")
        self.bert = bert
        self.head = head  # transform + LayerNorm + decoder whose weight is bert's item embedding table
        self.max_len = max_len  # history length + 1 (the query position the candidates take)
        self.gate = nn.Parameter(torch.zeros(bert.config.hidden_size))  # how much of E[c] enters the input

    @classmethod
    def from_recommender(cls, model: nn.Module) -> CrossRecReranker:
        """Start from a bidirectional `SeqRecommender` (BERT4Rec): a copy of its encoder and item head."""
        m = copy.deepcopy(model)
        if m.head.decoder.weight is not m.bert.embeddings.word.weight:
            raise ValueError("expected the item head's decoder tied to the item embeddings")
        return cls(m.bert, m.head, m.rec_config.max_len)

    def forward(self, batch: dict[str, torch.Tensor]) -> RerankerOutput:
        """batch: history (B, L) left-padded item ids, candidates (B, K) ids (-1: padding), optional
        labels (B,) the index of the positive candidate -> scores (B, K) and the listwise loss."""
        hist, cands = batch["history"], batch["candidates"]  # (B, L), (B, K)
        B, L = hist.shape
        K = cands.shape[1]
        if L > self.max_len - 1:
            raise ValueError(f"history has {L} columns; this reranker takes at most {self.max_len - 1}")
        hmask = hist != PAD_ID  # (B, L)
        if not bool(hmask.any(1).all()):
            raise ValueError("every history needs at least one item")
        first = shared_left_padding(hmask)
        hist, hmask = hist[:, first:], hmask[:, first:]  # (B, L', ...)
        L = hist.shape[1]
        emb = self.bert.embeddings
        pos = emb.position.weight  # (max_len, H)
        xh = emb.words(hist) + pos[self.max_len - 1 - L : self.max_len - 1]  # (B, L, H)
        safe = cands.clamp(min=0)  # (B, K)
        mask_token = emb.words(torch.tensor(MASK_ID, device=hist.device)) + pos[self.max_len - 1]  # (H,)
        xc = mask_token + self.gate * emb.words(safe)  # (B, K, H)
        x = emb.finish(torch.cat([xh, xc], dim=1))  # (B, L + K, H)
        # keys: real history columns for everyone; a candidate column only for its own row
        allowed = torch.zeros(B, L + K, L + K, dtype=torch.bool, device=x.device)  # (B, T, T)
        allowed[:, :, :L] = hmask[:, None, :]
        idx = torch.arange(L, L + K, device=x.device)
        allowed[:, idx, idx] = True
        allowed = allowed[:, None]  # (B, 1, T, T)
        for layer in self.bert.layers:
            x = layer(x, allowed)  # (B, L + K, H)
        if self.bert.final_norm is not None:
            x = self.bert.final_norm(x)
        t = self.head.transformed(x[:, L:])  # (B, K, H)
        scores = (t * emb.word(safe)).sum(-1) + self.head.decoder.bias[safe]  # (B, K)
        scores = scores.masked_fill(cands < FIRST_ITEM_ID, float("-inf"))  # padding and special ids
        loss = F.cross_entropy(scores.float(), batch["labels"]) if "labels" in batch else None
        return RerankerOutput(loss, scores)


def history_tensor(histories: Sequence[np.ndarray], max_len: int, width: int | None = None) -> torch.Tensor:
    """Left-padded (B, L) with the last max_len - 1 items of each history; L = `width`, or the longest kept."""
    keep = [np.asarray(h[-(max_len - 1) :], dtype=np.int64) for h in histories]
    if any(len(h) == 0 for h in keep):
        raise ValueError("every history needs at least one item")
    L = width or max(len(h) for h in keep)
    out = np.full((len(keep), L), PAD_ID, dtype=np.int64)
    for row, h in enumerate(keep):
        out[row, L - len(h) :] = h
    return torch.from_numpy(out)


def hard_negative_examples(
    sequences: Sequence[np.ndarray],
    teacher_scores,
    max_len: int,
    cuts_per_user: int,
    num_negatives: int,
    pool: int,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """Training rows from training sequences only, shaped like the reranker's serving input.

    For `cuts_per_user` random cut points t (>= 1) of each sequence s: history = s[:t] (its last
    max_len - 1 items), positive = s[t]. The teacher (the retriever, `teacher_scores(histories) -> (B, V)`)
    ranks the catalogue without the history's items; a row is kept only when the positive is in the
    teacher's top `pool` -- the reranker only ever sees such lists -- and its `num_negatives` negatives
    are sampled without replacement from the rest of that top `pool`. Training on negatives from the top
    while the positive may come from anywhere would teach "the teacher likes it -> negative".
    -> {"history": (N, max_len - 1), "candidates": (N, 1 + num_negatives), "labels": (N,) = 0}; the
    positive sits in column 0, which is safe because candidates are scored independently.
    """
    if pool <= num_negatives:
        raise ValueError(f"pool ({pool}) must exceed num_negatives ({num_negatives})")
    rng = np.random.default_rng(seed)
    hists, positives = [], []
    for s in sequences:
        s = np.asarray(s)
        if len(s) < 2:
            continue
        for t in rng.choice(np.arange(1, len(s)), size=min(cuts_per_user, len(s) - 1), replace=False):
            hists.append(s[max(0, t - (max_len - 1)) : t])
            positives.append(int(s[t]))
    if not hists:
        raise ValueError("no training sequence has two items")
    keep, cands = [], []
    with torch.no_grad():
        for start in range(0, len(hists), batch_size):
            chunk = hists[start : start + batch_size]
            scores = teacher_scores(chunk).float().clone()  # (B, V)
            for row, h in enumerate(chunk):
                scores[row, torch.from_numpy(np.asarray(h))] = float("-inf")
            top = scores.topk(pool, dim=1).indices.numpy()  # (B, pool)
            for row in range(len(chunk)):
                pos = positives[start + row]
                if pos not in top[row]:
                    continue
                others = top[row][top[row] != pos]
                keep.append(start + row)
                cands.append([pos, *rng.choice(others, size=num_negatives, replace=False)])
    if not keep:
        raise ValueError(f"the teacher's top {pool} never holds the positive: no training rows")
    return {
        "history": history_tensor([hists[i] for i in keep], max_len, width=max_len - 1),
        "candidates": torch.tensor(cands, dtype=torch.long),
        "labels": torch.zeros(len(keep), dtype=torch.long),
    }


def cross_reranker(model: CrossRecReranker, batch_size: int = 64):
    """A `seqbert.pipeline` Reranker: (histories, candidates (B, K)) -> scores (B, K)."""

    @torch.no_grad()
    def rerank(histories, candidates):
        model.eval()
        out = []
        for s in range(0, len(histories), batch_size):
            batch = {
                "history": history_tensor(histories[s : s + batch_size], model.max_len),
                "candidates": torch.as_tensor(np.asarray(candidates[s : s + batch_size]), dtype=torch.long),
            }
            out.append(model(batch).scores.float().cpu().numpy())
        return np.concatenate(out)

    return rerank
