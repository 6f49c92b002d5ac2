"""Cross-encoder reranking: `[CLS] query [SEP] passage [SEP]` -> one relevance logit (Nogueira & Cho 2019).

The scorer is `BertForSequenceClassification(config, num_labels=1)`, so Hugging Face rerankers such as
cross-encoder/ms-marco-MiniLM-L-12-v2 load unchanged. Training batches are groups: each query row holds
one positive passage first and G-1 negatives (retriever hard negatives), shape (B, G, L). Two losses:

  listwise  (softmax CE over the group):  l = -log( exp(s_pos) / sum_g exp(s_g) )
  pointwise (binary CE per pair):         l = -mean_g [ y_g log sigma(s_g) + (1 - y_g) log(1 - sigma(s_g)) ]

Shape legend: B queries, G passages per query (group), L length, P negative-pool size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from seqbert.data.text import encode_texts, load_tokenizer
from seqbert.model.heads import BertForSequenceClassification
from seqbert.model.hf import config_from_hf, load_hf_model

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class RerankOutput:
    scores: torch.Tensor  # (B, G) for grouped batches, (B,) for flat pair batches
    loss: torch.Tensor | None


class CrossEncoder(nn.Module):
    """A 1-logit sequence classifier plus a ranking loss. `loss` is "listwise" or "pointwise".

    Batch keys: input_ids / attention_mask / token_type_ids of shape (B, G, L) or (B, L), and optionally
    `labels` (B, G) with 1.0 for relevant passages (listwise needs >= 1 per row).
    """

    def __init__(self, classifier: BertForSequenceClassification, loss: str = "listwise") -> None:
        super().__init__()
        if classifier.num_labels != 1:
            raise ValueError(
                f"a cross-encoder needs num_labels=1, the classifier has {classifier.num_labels}"
            )
        if loss not in ("listwise", "pointwise"):
            raise ValueError(f"loss must be 'listwise' or 'pointwise', got {loss!r}")
        self.classifier = classifier
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor]) -> RerankOutput:
        shape = batch["input_ids"].shape[:-1]  # (B, G) or (B,)
        L = batch["input_ids"].shape[-1]
        flat = {k: batch[k].reshape(-1, L) for k in _INPUTS if k in batch}  # (B*G, L)
        scores = self.classifier(flat).logits.reshape(shape)  # (B, G) or (B,)
        loss = None
        if "labels" in batch:
            labels = batch["labels"].to(scores.dtype)  # (B, G)
            if self.loss == "pointwise":
                loss = F.binary_cross_entropy_with_logits(scores, labels)
            else:
                if scores.ndim != 2 or bool((labels.sum(-1) == 0).any()):
                    raise ValueError("listwise loss needs grouped (B, G) batches with >= 1 positive per row")
                log_p = F.log_softmax(scores, dim=-1)  # (B, G)
                loss = (-(labels * log_p).sum(-1) / labels.sum(-1)).mean()
        return RerankOutput(scores, loss)


def load_cross_encoder(directory: str | Path) -> tuple[BertForSequenceClassification, Tokenizer, list[str]]:
    """A HF reranker (or plain encoder) directory -> (1-logit classifier in eval mode, tokenizer, fresh names).

    From an encoder-only checkpoint (e.g. all-MiniLM-L6-v2) the classifier (and pooler, if absent) start
    fresh; their names come back in the third element so the caller knows the head still needs training.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: a Hugging Face BERT directory needs config.json")
    hf = json.loads(config_path.read_text())
    num_labels = hf.get("num_labels", len(hf.get("id2label", {})) or 1)
    if num_labels != 1 and "BertForSequenceClassification" in hf.get("architectures", []):
        raise ValueError(f"{config_path}: a reranker has one output label, this classifier has {num_labels}")
    model = BertForSequenceClassification(config_from_hf(hf), num_labels=1)
    model, fresh = load_hf_model(directory, model)
    return model.eval(), load_tokenizer(directory), fresh


@torch.no_grad()
def rerank(
    model: BertForSequenceClassification,
    tokenizer: Tokenizer,
    query: str,
    passages: Sequence[str],
    batch_size: int = 32,
    max_len: int = 512,
) -> np.ndarray:
    """Relevance logits (len(passages),) for one query, in passage order (higher = more relevant)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(passages)), key=lambda i: -len(passages[i]))  # similar lengths pad little
    scores = np.empty(len(passages), dtype=np.float32)
    for start in range(0, len(passages), batch_size):
        rows = order[start : start + batch_size]
        batch = encode_texts(tokenizer, [query] * len(rows), [passages[i] for i in rows], max_len)
        logits = model({k: v.to(device) for k, v in batch.items()}).logits  # (b, 1)
        scores[rows] = logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return scores


def group_collate(
    tokenizer: Tokenizer,
    query_texts: Sequence[str],
    doc_texts: Sequence[str],
    group_size: int,
    max_len: int = 256,
) -> Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]:
    """Collate for `TensorBatchSource` rows {query (B,), positive (B,), negatives (B, P) padded with -1}:
    draws G-1 distinct negatives per row from its pool with the batch generator (fresh hard negatives each
    epoch), tokenizes the G pairs and returns input tensors (B, G, L) and labels (B, G) = [1, 0, ..., 0].
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (one positive + negatives), got {group_size}")

    def collate(raw: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        B, G = raw["query"].shape[0], group_size
        queries, passages = [], []
        for b in range(B):
            pool = raw["negatives"][b]
            pool = pool[pool >= 0]  # (P',)
            if len(pool) < G - 1:
                raise ValueError(
                    f"row with query {int(raw['query'][b])} has {len(pool)} negatives, needs {G - 1}"
                )
            picked = pool[torch.randperm(len(pool), generator=generator)[: G - 1]]
            q = query_texts[int(raw["query"][b])]
            queries += [q] * G
            passages += [doc_texts[int(d)] for d in [raw["positive"][b], *picked]]
        enc = encode_texts(tokenizer, queries, passages, max_len)  # (B*G, L)
        batch = {k: v.reshape(B, G, -1) for k, v in enc.items()}  # (B, G, L)
        labels = torch.zeros(B, G)
        labels[:, 0] = 1.0
        batch["labels"] = labels
        return batch

    return collate
