"""Heads that sit on the BERT core, and the small models that compose core + heads.

The MLM head scores only the masked positions (google-research/bert `gather_indexes`): with an item
catalogue or a 30k word vocabulary the (B*L, V) logits of every position dominate time and memory, and
only the ~15-20 % masked rows are ever used. Shape legend: B batch, L length, H hidden, V vocabulary,
M masked positions in the batch, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqbert.data.masking import IGNORE_INDEX
from seqbert.model.bert import Bert, BertConfig, init_weights, linear
from seqbert.model.dropout import Dropout


class MLMHead(nn.Module):
    """transform (dense + GELU + LayerNorm) -> decoder tied to the input embeddings + bias.

    `transform=False` drops the transform: logits = h E^T + b (the dot-product item head of SASRec).
    """

    def __init__(self, config: BertConfig, transform: bool = True) -> None:
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size) if transform else None
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if transform else None
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied by the owner

    def transformed(self, hidden: torch.Tensor) -> torch.Tensor:
        """t(h) (..., H): LayerNorm(GELU(W h + c)), or h itself without a transform."""
        if self.transform is None:
            return hidden
        return self.norm(linear(hidden, self.transform, gelu=True))  # fused on CPU fp32 inference

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) -> logits (..., V); callers pass only the rows they need scored."""
        # the decoder stays addmm: for a wide vocabulary oneDNN's fused bias was not faster (1 thread, 30k)
        return self.decoder(self.transformed(hidden))


class Pooler(nn.Module):
    """tanh(W h_[CLS] + b): BERT's sentence representation for NSP and sequence classification."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


def gather_masked(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `hidden` (B, L, H) whose label is not IGNORE_INDEX -> (M, H) and their labels (M,)."""
    where = labels != IGNORE_INDEX  # (B, L)
    return hidden[where], labels[where]  # (M, H), (M,)


@dataclass
class PreTrainingOutput:
    mlm_logits: torch.Tensor  # (M, V): only the masked positions, in row-major (batch, position) order
    mlm_labels: torch.Tensor  # (M,)
    nsp_logits: torch.Tensor | None  # (B, 2)
    loss: torch.Tensor | None  # MLM cross-entropy (+ NSP cross-entropy when present)
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None


class BertForPreTraining(nn.Module):
    """Core + MLM head (+ pooler and NSP head when `nsp=True`). Batch keys: input_ids, attention_mask,
    token_type_ids (optional), labels (B, L) with IGNORE_INDEX off the masked positions, next_sentence_label.
    """

    def __init__(self, config: BertConfig, nsp: bool = True) -> None:
        super().__init__()
        self.config = config
        self.bert = Bert(config)
        self.mlm = MLMHead(config)
        self.pooler = Pooler(config) if nsp else None
        self.nsp = nn.Linear(config.hidden_size, 2) if nsp else None
        for module in (self.mlm, self.pooler, self.nsp):
            if module is not None:
                module.apply(lambda m: init_weights(m, config.initializer_range))
        nn.init.zeros_(self.mlm.decoder.bias)
        self.mlm.decoder.weight = self.bert.embeddings.word.weight  # weight tying (Press & Wolf 2017)

    def forward(
        self, batch: dict[str, torch.Tensor], all_positions: bool = False, compute_loss: bool = True
    ) -> PreTrainingOutput:
        """`all_positions=True` scores every position (B*L, V), the slow reference for the gathered path.
        `compute_loss=False` returns the logits (and labels) only: inference skips the (M, V) log-softmax."""
        hidden = self.bert(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        labels = batch.get("labels")
        if all_positions or labels is None:
            B, L, H = hidden.shape
            mlm_logits = self.mlm(hidden.reshape(B * L, H))  # (B*L, V)
            mlm_labels = labels.reshape(B * L) if labels is not None else torch.empty(0, dtype=torch.long)
        else:
            rows, mlm_labels = gather_masked(hidden, labels)  # (M, H), (M,)
            mlm_logits = self.mlm(rows)  # (M, V)
        mlm_loss = F.cross_entropy(mlm_logits, mlm_labels) if labels is not None and compute_loss else None
        nsp_logits = self.nsp(self.pooler(hidden)) if self.nsp is not None else None  # (B, 2)
        nsp_loss = None
        if nsp_logits is not None and "next_sentence_label" in batch and compute_loss:
            nsp_loss = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
        parts = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(parts[1:], parts[0]) if parts else None
        return PreTrainingOutput(mlm_logits, mlm_labels, nsp_logits, loss, mlm_loss, nsp_loss)


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, C) for sequences, (B, L, C) for tokens
    loss: torch.Tensor | None


class BertForSequenceClassification(nn.Module):
    """Core + pooler + dropout + linear over C classes (C = 1 is regression / a relevance score)."""

    def __init__(self, config: BertConfig, num_labels: int) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.config = config
        self.num_labels = num_labels
        self.bert = Bert(config)
        self.pooler = Pooler(config)
        self.dropout = Dropout(config.dropout, config.fast_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        for module in (self.pooler, self.classifier):
            module.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, batch: dict[str, torch.Tensor]) -> ClassifierOutput:
        hidden = self.bert(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        logits = self.classifier(self.dropout(self.pooler(hidden)))  # (B, C)
        loss = None
        if "labels" in batch:
            labels = batch["labels"]
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = F.cross_entropy(logits, labels)
        return ClassifierOutput(logits, loss)


class BertForTokenClassification(nn.Module):
    """Core + dropout + linear per token; labels (B, L) with IGNORE_INDEX on padding and sub-word tails."""

    def __init__(self, config: BertConfig, num_labels: int) -> None:
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        self.config = config
        self.num_labels = num_labels
        self.bert = Bert(config)
        self.dropout = Dropout(config.dropout, config.fast_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.classifier.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, batch: dict[str, torch.Tensor]) -> ClassifierOutput:
        hidden = self.bert(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        logits = self.classifier(self.dropout(hidden))  # (B, L, C)
        loss = None
        if "labels" in batch:
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels), batch["labels"].reshape(-1))
        return ClassifierOutput(logits, loss)
