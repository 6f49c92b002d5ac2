"""Text embeddings from the BERT core: mean or [CLS] pooling, optional L2 normalisation, batched.

`encode` reproduces sentence-transformers' `Transformer -> Pooling -> Normalize` stack (Reimers &
Gurevych 2019) on seqbert's `Bert`, so a sentence-transformers checkpoint such as all-MiniLM-L6-v2 gives
the same vectors (tests/retrieval/test_embed.py checks 1e-5 parity). Tokenisation is `seqbert.data.text`'s
(the one tokeniser stack): the checkpoint's `tokenizer.json` (the file the HF "fast" tokenizer wraps),
truncated longest-first at `max_len` and padded to the batch's longest row.
Shape legend: N texts, B batch, L length, H hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from seqbert.data.text import encode_texts, load_tokenizer
from seqbert.model.bert import Bert
from seqbert.model.hf import load_hf_model

POOLINGS = ("mean", "cls")
BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "


@dataclass(frozen=True)
class DenseEncoderConfig:
    """A bi-encoder as a first stage: which weights, how token states become one vector, what is prepended.

    all-MiniLM-L6-v2 (the default): mean pooling, max_len 256, no prefix. bge-small-en-v1.5 (Xiao et al.
    2023): [CLS] pooling, max_len 512, and the instruction `BGE_QUERY_PREFIX` before queries only (passages
    are encoded bare), as its model card prescribes for short-query -> passage retrieval.
    """

    name: str = "dense"  # the stage's name in reports and the corpus cache key
    model_dir: str | None = None  # a HF BERT directory; None: the bundled all-MiniLM-L6-v2
    pooling: str = "mean"  # one of POOLINGS
    normalize: bool = True  # L2: inner product = cosine
    query_prefix: str = ""
    doc_prefix: str = ""
    max_len: int = 256
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"name must be a non-empty identifier (letters, digits, _), got {self.name!r}")
        if not 1 <= self.max_len <= 8192:
            raise ValueError(f"max_len must be in [1, 8192], got {self.max_len}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def cache_tag(self) -> str:
        """What besides the weights decides a corpus encoding (the cache key's settings part)."""
        return f"{self.pooling}-{'n' if self.normalize else 'u'}-{self.max_len}-{self.doc_prefix!r}"


def encode_with(
    cfg: DenseEncoderConfig, model: Bert, tokenizer: Tokenizer, texts: Sequence[str], queries: bool
) -> torch.Tensor:
    """`encode` with the settings of `cfg`; `queries` picks the query or the document prefix -> (N, H)."""
    prefix = cfg.query_prefix if queries else cfg.doc_prefix
    texts = [prefix + t for t in texts] if prefix else list(texts)
    return encode(model, tokenizer, texts, cfg.pooling, cfg.normalize, cfg.batch_size, cfg.max_len)


def load_encoder(directory: str | Path) -> tuple[Bert, Tokenizer]:
    """A HF BERT / sentence-transformers directory -> (Bert core in eval mode, tokenizer)."""
    model, _ = load_hf_model(directory)
    return model.eval(), load_tokenizer(directory)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden (B, L, H) -> (B, H): masked mean over real tokens, or the [CLS] row.

    mean: e = sum_t m_t h_t / max(sum_t m_t, 1e-9)  (sentence-transformers' Pooling, mean mode)
    """
    if pooling == "cls":
        return hidden[:, 0]  # (B, H)
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
    raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")


@torch.no_grad()
def encode(
    model: Bert,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 32,
    max_len: int = 256,
) -> torch.Tensor:
    """Embed `texts` -> (N, H) float32 on the CPU, rows in input order.

    Texts are sorted by length so each batch pads little (as sentence-transformers does); `max_len=256`
    is all-MiniLM-L6-v2's `max_seq_length`. The model runs in eval mode (no dropout) on its own device.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got a single string")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size)  # (N, H)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        batch = {
            k: v.to(device)
            for k, v in encode_texts(tokenizer, [texts[i] for i in rows], None, max_len).items()
        }
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, L, H)
        e = pool(hidden.float(), batch["attention_mask"], pooling)  # (B, H)
        if normalize:
            e = F.normalize(e, p=2, dim=-1)  # cosine similarity becomes inner product
        out[rows] = e.cpu()
    model.train(was_training)
    return out
