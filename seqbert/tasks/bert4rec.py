"""BERT4Rec (cloze) and SASRec+ (causal next-item) recommenders on the BERT core, plus MostPop.

One model class serves both objectives (Sun et al. 2019; Klenitskiy & Vasilev 2023, "Turning dross into
gold loss: is BERT4Rec really better than SASRec?"):
  cloze      bidirectional attention; random items replaced by [MASK] and predicted; at inference a [MASK]
             is appended after the history and its hidden state scores the catalogue.
  next_item  causal attention; every position predicts the next item (cross-entropy over the catalogue,
             "SASRec+"); at inference the last history position scores the catalogue.
Sequences are left-padded so the query position is always the last column (L - 1).
Losses over the catalogue: full softmax cross-entropy (default), sampled softmax with logQ correction, or
gBCE (Petrov & Macdonald 2023, "gSASRec"), all computed only at the labelled positions; the sampled ones
live in `seqbert.tasks.catalogue` and never build (M, V) logits.
Shape legend: B batch, L length, H hidden, V vocabulary (specials + items), M labelled positions,
K negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seqbert.data.masking import mask_tokens
from seqbert.data.vocab import FIRST_ITEM_ID, MASK_ID, PAD_ID
from seqbert.model.bert import Bert, BertConfig, init_weights
from seqbert.model.heads import IGNORE_INDEX, MLMHead
from seqbert.tasks.catalogue import (
    NEGATIVES,
    NegativeSampler,
    gbce_loss,
    gbce_prior_logit,
    sampled_logits,
    sampled_softmax_loss,
    sequence_sampled_logits,
)
from seqbert.tasks.chunked_ce import chunked_catalogue_ce

OBJECTIVES = ("cloze", "next_item")
LOSSES = ("ce", "sampled_softmax", "gbce")
NEGATIVES_PER = ("sequence", "batch")
ITEM_HEADS = ("transform", "dot")


@dataclass(frozen=True)
class RecConfig:
    """The recommendation task around the core; sizes of the core are in `BertConfig`."""

    objective: str = "cloze"
    max_len: int = 200  # items the model reads; cloze uses max_len - 1 history items + the [MASK]
    mask_prob: float = 0.2  # cloze: probability to mask each item (0.2 ML-1M, 0.6 Beauty; Sun et al. 2019)
    replace_probs: tuple[float, float, float] = (
        1.0,
        0.0,
        0.0,
    )  # [MASK]-only as in the paper; BERT: 0.8/0.1/0.1
    last_item_prob: float = 0.1  # cloze: share of windows with only the last item masked (Sun et al. §3.6)
    window_stride: int = 0  # stride between training windows of long histories; 0 = max_len (no overlap)
    loss: str = "ce"  # one of LOSSES; the loss is the mean over the batch's labelled positions
    num_negatives: int = 256  # sampled_softmax / gbce: K negatives per sequence or per batch (negatives_per)
    # "sequence": each sequence draws its own K (as gSASRec draws per position); "batch": one set shared by the
    # whole batch. With few negatives, a shared set stalls cloze training: BERT4Rec, 200 items, K = 32,
    # HR@10 at chance (0.05) after 150 steps shared, 0.77 per sequence (CE 0.82); +~12 % CPU per step
    # at 54 k items (a (B, K, H) gather instead of (K, H))
    negatives_per: str = "sequence"
    negatives: str = "uniform"  # sampled_softmax: one of catalogue.NEGATIVES; gbce: uniform only
    mixed_share: float = 0.5  # negatives="mixed": share of the K drawn by popularity, the rest uniform
    gbce_t: float = 0.75  # gBCE calibration t (Petrov & Macdonald 2023)
    # "transform": scores = LayerNorm(GELU(W h + c)) . e_i + b_i (BERT's MLM head, Sun et al. 2019);
    # "dot": scores = h . e_i, the hidden state against the tied item embedding with no transform and no
    # trained bias (SASRec, K&V's SASRec+, RecTools) -- fewer parameters to overfit a sparse catalogue
    item_head: str = "transform"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"RecConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"RecConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if not isinstance(self.max_len, int) or self.max_len < 2:
            raise ValueError(f"RecConfig.max_len must be an integer >= 2, got {self.max_len!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"RecConfig.mask_prob must be in (0, 1), got {self.mask_prob!r}")
        if not 0.0 <= self.last_item_prob <= 1.0:
            raise ValueError(f"RecConfig.last_item_prob must be in [0, 1], got {self.last_item_prob!r}")
        if self.window_stride < 0:
            raise ValueError(f"RecConfig.window_stride must be >= 0, got {self.window_stride!r}")
        if self.num_negatives < 1:
            raise ValueError(f"RecConfig.num_negatives must be >= 1, got {self.num_negatives!r}")
        if self.negatives_per not in NEGATIVES_PER:
            raise ValueError(
                f"RecConfig.negatives_per must be one of {NEGATIVES_PER}, got {self.negatives_per!r}"
            )
        if self.negatives not in NEGATIVES:
            raise ValueError(f"RecConfig.negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.loss == "gbce" and self.negatives != "uniform":
            raise ValueError(
                f"RecConfig.negatives must be 'uniform' for loss='gbce' (its beta assumes it), got {self.negatives!r}"
            )
        if not 0.0 < self.mixed_share < 1.0:
            raise ValueError(f"RecConfig.mixed_share must be in (0, 1), got {self.mixed_share!r}")
        if self.item_head not in ITEM_HEADS:
            raise ValueError(f"RecConfig.item_head must be one of {ITEM_HEADS}, got {self.item_head!r}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ValueError(f"RecConfig.gbce_t must be in [0, 1], got {self.gbce_t!r}")
        if len(self.replace_probs) != 3 or abs(sum(self.replace_probs) - 1.0) > 1e-6:
            raise ValueError(
                f"RecConfig.replace_probs must be 3 numbers summing to 1, got {self.replace_probs!r}"
            )


# ------------------------------------------------------------------------------------------ data


def training_windows(sequences: Sequence[np.ndarray], config: RecConfig) -> torch.Tensor:
    """Cut every training sequence into left-padded windows (N, W) so no interaction is discarded.

    cloze: W = max_len items per window. next_item: W = max_len + 1 (inputs x[:-1], targets x[1:]).
    Windows end at the last item and step back by `window_stride` (default: the window length) until the
    start of the history is covered.
    """
    width = config.max_len + (1 if config.objective == "next_item" else 0)
    stride = config.window_stride or width
    min_items = 2 if config.objective == "next_item" else 1
    rows = []
    for s in sequences:
        n = len(s)
        if n < min_items:
            continue
        end = n
        while True:
            start = max(0, end - width)
            window = s[start:end]
            if len(window) >= min_items:
                rows.append(np.pad(window, (width - len(window), 0), constant_values=PAD_ID))
            if start == 0:
                break
            # the next window must overlap by one item for next_item, so the pair across the cut is kept
            end = end - stride + (1 if config.objective == "next_item" and stride >= width else 0)
    if not rows:
        raise ValueError("no training sequence has enough items to form a window")
    return torch.from_numpy(np.stack(rows).astype(np.int64))  # (N, W)


def make_collate(config: RecConfig, vocab_size: int, item_counts: np.ndarray | None = None):
    """collate(raw {"items": (B, W)}, generator) -> model batch; all randomness from `generator`.

    Sampled losses add K negatives and their logQ terms: negatives_per="sequence" as "sequence_negatives"
    and "sequence_negative_log_expected" (B, K), one set per row (sharded with the rows under DDP);
    negatives_per="batch" as "negatives" and "negative_log_expected" (K,), one set for the batch, which
    `seqbert.training.data.SHARED_KEYS` names, so under DDP every rank gets the whole set.
    `item_counts` (vocab_size,): training counts per id (`catalogue.count_items`), for popularity negatives.
    """
    sampler = None
    if config.loss != "ce":
        sampler = NegativeSampler(
            vocab_size, config.num_negatives, config.negatives, item_counts, config.mixed_share
        )

    def collate(raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        items = raw["items"]  # (B, W)
        if config.objective == "next_item":
            inputs, targets = items[:, :-1], items[:, 1:]  # (B, L), (B, L)
            labels = targets.masked_fill((inputs == PAD_ID) | (targets == PAD_ID), IGNORE_INDEX)
            batch = {"input_ids": inputs, "attention_mask": (inputs != PAD_ID).long(), "labels": labels}
        else:
            pad = items == PAD_ID  # (B, L)
            inputs, labels = mask_tokens(
                items, pad, generator, config.mask_prob, vocab_size, MASK_ID,
                replace_probs=config.replace_probs, min_masked=1, keep_one_unmasked=True,
                random_low=FIRST_ITEM_ID,
            )  # fmt: skip
            # "mask the last item" windows mimic inference, where only the appended position is predicted
            last_only = torch.rand(items.shape[0], generator=generator) < config.last_item_prob  # (B,)
            if last_only.any():
                last = torch.zeros_like(pad)
                last[:, -1] = True
                inputs = torch.where(last_only[:, None], torch.where(last, MASK_ID, items), inputs)
                labels = torch.where(last_only[:, None], torch.where(last, items, IGNORE_INDEX), labels)
            batch = {"input_ids": inputs, "attention_mask": (~pad).long(), "labels": labels}
        if sampler is not None and config.negatives_per == "sequence":
            negatives, log_expected = sampler.sample(generator, sets=items.shape[0])  # (B, K), (B, K)
            batch["sequence_negatives"], batch["sequence_negative_log_expected"] = negatives, log_expected
        elif sampler is not None:  # one set of negatives for the whole batch
            negatives, log_expected = sampler.sample(generator)  # (K,), (K,)
            batch["negatives"], batch["negative_log_expected"] = negatives, log_expected  # (K,), (K,)
        return batch

    return collate


def make_inputs(histories: Sequence[np.ndarray], config: RecConfig) -> dict[str, torch.Tensor]:
    """Histories -> left-padded model inputs (B, max_len) whose last column is the query position.

    cloze: the last max_len - 1 items, then [MASK] (appended after the history as in training, §3.6).
    next_item: the last max_len items.
    """
    keep = config.max_len - 1 if config.objective == "cloze" else config.max_len
    ids = np.full((len(histories), config.max_len), PAD_ID, dtype=np.int64)
    for row, h in enumerate(histories):
        h = np.asarray(h[-keep:], dtype=np.int64)
        if config.objective == "cloze":
            h = np.append(h, MASK_ID)
        if len(h) == 0:
            raise ValueError(f"history {row} is empty: a next_item model needs at least one item")
        ids[row, config.max_len - len(h) :] = h
    input_ids = torch.from_numpy(ids)
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD_ID).long()}


def shared_left_padding(mask: torch.Tensor) -> int:
    """Number of leading columns of a left-padded (B, L) mask that are padding in every row: they can be
    dropped (with positions shifted by as many) without changing any real position's output."""
    return int(mask.any(0).to(torch.int8).argmax())


# ----------------------------------------------------------------------------------------- model


@dataclass
class RecOutput:
    loss: torch.Tensor
    logits: torch.Tensor | None = None  # (M, 1 + K) for sampled losses; ce never builds its (M, V) logits


class SeqRecommender(nn.Module):
    """BERT core over item ids + an item head (transform + LayerNorm, unless item_head="dot", then a decoder
    tied to the item embeddings)."""

    def __init__(self, bert_config: BertConfig, config: RecConfig) -> None:
        super().__init__()
        if bert_config.type_vocab_size != 0:
            raise ValueError("BertConfig.type_vocab_size must be 0 for item sequences (no segments)")
        if bert_config.causal != (config.objective == "next_item"):
            raise ValueError(
                f"BertConfig.causal={bert_config.causal} contradicts RecConfig.objective={config.objective!r}"
            )
        if bert_config.max_len < config.max_len:
            raise ValueError(f"BertConfig.max_len={bert_config.max_len} < RecConfig.max_len={config.max_len}")
        self.config = bert_config
        self.rec_config = config
        self.bert = Bert(bert_config)
        self.head = MLMHead(bert_config, transform=config.item_head == "transform")
        self.head.apply(lambda m: init_weights(m, bert_config.initializer_range))
        nn.init.zeros_(self.head.decoder.bias)
        if config.loss == "gbce":
            # gBCE is not shift-invariant: start the items at its constant optimum, or the encoder gets there
            # first by collapsing every query onto one direction and never leaves (catalogue.gbce_prior_logit)
            prior = gbce_prior_logit(
                bert_config.vocab_size - FIRST_ITEM_ID, config.num_negatives, config.gbce_t
            )
            nn.init.constant_(self.head.decoder.bias[FIRST_ITEM_ID:], prior)
        if config.item_head == "dot":  # the bias stays at its start (0, or gBCE's constant prior): untrained
            self.head.decoder.bias.requires_grad_(False)
        self.head.decoder.weight = self.bert.embeddings.word.weight  # weight tying (Sun et al. 2019, §3.4)
        # special ids are never recommended nor targets: their logits are pinned to -inf
        special = torch.zeros(bert_config.vocab_size, dtype=torch.bool)
        special[:FIRST_ITEM_ID] = True
        self.register_buffer("special", special, persistent=False)

    def transformed(self, hidden: torch.Tensor) -> torch.Tensor:
        """t(h): the head's transform (dense + GELU + LayerNorm; identity for item_head="dot");
        scores = t(h) @ E^T + b."""
        return self.head.transformed(hidden)  # (..., H)

    def catalogue_logits(self, rows: torch.Tensor) -> torch.Tensor:
        logits = self.head(rows)  # (M, V)
        return logits.masked_fill(self.special, float("-inf"))

    def forward(self, batch: dict[str, torch.Tensor]) -> RecOutput:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # (B, L) each
        # columns that are padding in every row are dropped, positions shifted to match (see query_hidden);
        # with length-bucketed batches (TensorBatchSource(lengths=...)) that is most of the padding
        first = shared_left_padding(mask)
        if first and bool((labels[:, :first] != IGNORE_INDEX).any()):
            raise ValueError("labels found on padding columns (attention_mask 0): inputs must be left-padded")
        hidden = self.bert(ids[:, first:], mask[:, first:], position_offset=first)  # (B, L - first, H)
        labels = labels[:, first:]  # (B, L - first)
        where = labels != IGNORE_INDEX  # (B, L - first)
        rows, targets = hidden[where], labels[where]  # (M, H), (M,)
        if self.rec_config.loss == "ce":
            # = F.cross_entropy(self.catalogue_logits(rows), targets) in row chunks, never the (M, V) logits
            weight, bias = self.head.decoder.weight, self.head.decoder.bias
            return RecOutput(
                chunked_catalogue_ce(self.transformed(rows), weight, bias, targets, FIRST_ITEM_ID)
            )
        # sampled losses: logits only for the targets and K negatives, never (M, V)
        weight, bias = self.head.decoder.weight, self.head.decoder.bias
        if "sequence_negatives" in batch:  # one set per sequence (B, K)
            sequence = where.nonzero()[:, 0]  # (M,) the batch row of each labelled position, row-major
            negatives = batch["sequence_negatives"]  # (B, K)
            pos, neg = sequence_sampled_logits(
                self.transformed(rows), weight, bias, targets, negatives, sequence
            )
            log_expected = batch["sequence_negative_log_expected"][sequence]  # (M, K)
        else:  # one set shared by the batch (K,)
            pos, neg = sampled_logits(self.transformed(rows), weight, bias, targets, batch["negatives"])
            log_expected = batch["negative_log_expected"]  # (K,)
        if self.rec_config.loss == "sampled_softmax":
            loss = sampled_softmax_loss(pos, neg, log_expected)  # (M,)
        else:
            num_items = self.config.vocab_size - FIRST_ITEM_ID
            loss = gbce_loss(pos, neg, num_items, self.rec_config.gbce_t)  # (M,)
        return RecOutput(loss.mean(), torch.cat([pos[:, None], neg], dim=1))

    def query_hidden(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder output (B, H) at the query position (the last column) of left-padded inputs.

        Leading columns that are padding in every row are dropped first and the positions shifted to
        match, which changes no real position's output (padding keys are masked) but saves their work:
        with batches of similar length (`evaluate_ranking(sort_by_length=True)`) most of it. Outside
        training only the query column goes through the last layer's attention and feed-forward
        (`Bert.encode_last`, equal to the full encoding's last column).
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, L)
        first = shared_left_padding(mask)
        if not self.training:
            return self.bert.encode_last(ids[:, first:], mask[:, first:], position_offset=first)  # (B, H)
        hidden = self.bert(ids[:, first:], mask[:, first:], position_offset=first)  # (B, L - first, H)
        return hidden[:, -1]  # (B, H)

    def score(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores over the whole vocabulary (B, V) at the query position (the last column)."""
        return self.catalogue_logits(self.query_hidden(inputs))  # (B, V)


def score_histories(
    model: SeqRecommender, histories: Sequence[np.ndarray], device: torch.device | None = None
) -> torch.Tensor:
    """(B, V) catalogue scores for raw histories; the `score_fn` of `seqbert.evaluation.ranking`."""
    device = device or next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in make_inputs(histories, model.rec_config).items()}
    return model.score(inputs)


def query_states(
    model: SeqRecommender, histories: Sequence[np.ndarray], device: torch.device | None = None
) -> torch.Tensor:
    """t(h) (B, H): the head's transformed hidden state at the query position, so that the catalogue
    scores are t(h) @ E^T + b. With `seqbert.retrieval.items.query_vectors` it is a Faiss query."""
    device = device or next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in make_inputs(histories, model.rec_config).items()}
    return model.transformed(model.query_hidden(inputs))  # (B, H)


def candidate_scores(
    model: SeqRecommender, histories: Sequence[np.ndarray], candidates: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """The model's scores (B, K) of only the candidate ids (B, K) -- a reranker for retrieved candidates.

    Equal to `score_histories(...)` gathered at the candidates, without the (B, V) catalogue product.
    Padding ids (< 0) and special ids score -inf; ids >= V raise.
    """
    V = model.config.vocab_size
    cand = torch.as_tensor(np.asarray(candidates), dtype=torch.long)  # (B, K)
    if cand.ndim != 2 or len(cand) != len(histories):
        raise ValueError(f"candidates must be ({len(histories)}, K), got {tuple(cand.shape)}")
    if cand.numel() and cand.max() >= V:
        raise ValueError(f"candidate id {int(cand.max())} is outside the vocabulary of {V} ids")
    t = query_states(model, histories)  # (B, H)
    weight, bias = model.head.decoder.weight, model.head.decoder.bias
    safe = cand.clamp(min=0).to(t.device)  # (B, K)
    scores = torch.einsum("bh,bkh->bk", t, weight[safe]) + bias[safe]  # (B, K)
    invalid = (cand < 0).to(t.device) | model.special[safe]
    return scores.masked_fill(invalid, float("-inf"))


class MostPop:
    """Recommend the most interacted-with training items to everyone (the baseline every model must beat)."""

    def __init__(self, train_sequences: Sequence[np.ndarray], vocab_size: int) -> None:
        counts = np.bincount(np.concatenate([np.asarray(s) for s in train_sequences]), minlength=vocab_size)
        counts[:FIRST_ITEM_ID] = 0
        # tie-break by id so the ranking is deterministic; specials at -inf like the models
        scores = counts.astype(np.float64) - np.arange(vocab_size) * 1e-9
        scores[:FIRST_ITEM_ID] = -np.inf
        self.scores = torch.from_numpy(scores).float()  # (V,)

    def score_histories(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        return self.scores.expand(len(histories), -1)  # (B, V)
