"""The `pretrain` job: a text BERT with masked LM + next-sentence prediction (Devlin et al. 2019).

    seqbert train recipes/text_pretrain_wikitext2.yaml --out runs/d2l --data-dir DATA

config -> corpus (WikiText-2 as D2L reads it, or a folder of text files) -> tokenizer (word-level vocabulary
or WordPiece, trained here, or loaded) -> NSP sentence pairs -> BertForPreTraining -> train (dynamic 15 %
masking per batch) -> held-out MLM/NSP evaluation -> `OUT/model/` (model + tokenizer.json) and
`OUT/metrics.json`. The run directory initialises fine-tuning (`model: {init: seqbert, init_dir: OUT}`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seqbert.data.masking import IGNORE_INDEX
from seqbert.data.text import (
    load_tokenizer,
    make_nsp_pairs,
    read_text_folder,
    read_wikitext,
    special_ids,
    tokenize_documents,
    train_word_level,
    train_wordpiece,
)
from seqbert.jobs.text_io import data_path, write_metrics
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForPreTraining, PreTrainingOutput, gather_masked
from seqbert.tasks.text import MODEL_DIR, pretraining_collate
from seqbert.text_model import evaluate_pretraining, save_pretrained
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train


@dataclass(frozen=True)
class CorpusConfig:
    source: str = "wikitext"  # "wikitext" (one paragraph a line, D2L's reading) or "folder" (*.txt files)
    path: str = "wikitext-2/wiki.train.tokens"  # relative paths are under the data directory
    lowercase: bool = True
    detokenize: bool = False  # WikiText only: rejoin "@-@" etc. and map <unk> to [UNK] (for WordPiece)
    max_documents: int | None = None  # keep the first N documents (None: all)

    def __post_init__(self) -> None:
        if self.source not in ("wikitext", "folder"):
            raise ValueError(f"source must be 'wikitext' or 'folder', got {self.source!r}")
        if self.max_documents is not None and self.max_documents < 2:
            raise ValueError(f"max_documents must be >= 2, got {self.max_documents}")


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "word"  # "word" (whitespace words, D2L), "wordpiece" (trained here) or "file" (load `path`)
    vocab_size: int = 8000  # wordpiece only
    min_frequency: int = 5  # word: D2L keeps words seen >= 5 times; wordpiece: pair-merge threshold
    path: str | None = None  # file: tokenizer.json, vocab.txt or a directory with either

    def __post_init__(self) -> None:
        if self.kind not in ("word", "wordpiece", "file"):
            raise ValueError(f"tokenizer.kind must be 'word', 'wordpiece' or 'file', got {self.kind!r}")
        if self.kind == "file" and not self.path:
            raise ValueError("tokenizer.path is required when tokenizer.kind is 'file'")
        if self.vocab_size < 10 or self.min_frequency < 1:
            raise ValueError(
                f"need vocab_size >= 10, min_frequency >= 1; got {self.vocab_size}, {self.min_frequency}"
            )


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    dropout: float = 0.1
    pre_ln: bool = False


@dataclass(frozen=True, kw_only=True)
class PretrainJob:
    train: TrainConfig
    data: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    max_len: int = 64  # tokens per pair, [CLS] and both [SEP] included
    drop_long: bool = True  # D2L drops pairs longer than max_len; False trims them (google-research/bert)
    mask_prob: float = 0.15
    # "masked": MLM cross-entropy over the masked tokens only (correct). "d2l_pytorch": D2L's PyTorch
    # formula, to explain its printed figure only (see D2LLoss).
    mlm_loss: str = "masked"
    batch_size: int = 512
    eval_pairs: int = 1024  # held out from training for the MLM/NSP evaluation (0: none)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_len < 8:
            raise ValueError(f"max_len must be >= 8, got {self.max_len}")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.eval_pairs < 0:
            raise ValueError(f"eval_pairs must be >= 0, got {self.eval_pairs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.mlm_loss not in ("masked", "d2l_pytorch"):
            raise ValueError(f"mlm_loss must be 'masked' or 'd2l_pytorch', got {self.mlm_loss!r}")


@dataclass
class D2LOutput(PreTrainingOutput):
    """D2LLoss's output: `mlm_loss` is D2L's formula, `masked_mlm_loss` the correct masked-token loss."""

    masked_mlm_loss: torch.Tensor | None = None


class LossLog(nn.Module):
    """Passes batches to the model and keeps each training step's MLM and NSP losses (D2L reports their
    mean over the run; the training loop logs only the total)."""

    def __init__(self, model: BertForPreTraining, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss  # a module computing the output from the batch instead of `model` (D2LLoss)
        self.mlm: list[float] = []
        self.nsp: list[float] = []
        self.masked_mlm: list[float] = []

    def forward(self, batch):
        out = (self.loss or self.model)(batch)
        if self.training:
            self.mlm.append(out.mlm_loss.item())
            self.nsp.append(out.nsp_loss.item())
            masked = out.masked_mlm_loss if isinstance(out, D2LOutput) else out.mlm_loss
            self.masked_mlm.append(masked.item())
        return out


class D2LLoss(nn.Module):
    """D2L §15.10's PyTorch MLM loss, reproduced to explain its printed figure -- not for real training.

    D2L gives each pair `slots` = round(max_len * 0.15) prediction slots; unused ones point at position 0
    ([CLS]) with label 0 (D2L's <unk>) and weight 0. But with `nn.CrossEntropyLoss()` (mean reduction)
    `loss(y_hat, y) * weights.reshape(-1, 1)` multiplies one scalar by the weights, and dividing the sum by
    sum(weights) leaves the plain mean over ALL B * slots slots, padded ones included:

        d2l_mlm = ( sum_masked CE(y | h_i) + sum_b pad_b * CE(<unk> | h_cls_b) ) / (B * slots)

    Predicting <unk> at [CLS] is trivial, so the padded slots pull the figure far below the real MLM loss.
    """

    def __init__(self, model: BertForPreTraining, slots: int, unk_id: int) -> None:
        super().__init__()
        self.model, self.slots, self.unk_id = model, slots, unk_id

    def forward(self, batch) -> D2LOutput:
        m = self.model
        hidden = m.bert(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        labels = batch["labels"]  # (B, L)
        B = len(labels)
        pad_slots = (self.slots - (labels != IGNORE_INDEX).sum(1)).clamp(min=0)  # (B,)
        rows, targets = gather_masked(hidden, labels)  # (M, H), (M,)
        logits = m.mlm(torch.cat([rows, hidden[:, 0]]))  # (M + B, V)
        ce = F.cross_entropy(
            logits.float(), torch.cat([targets, targets.new_full((B,), self.unk_id)]), reduction="none"
        )  # fmt: skip  (M + B,)
        weights = torch.cat([torch.ones_like(targets, dtype=ce.dtype), pad_slots.to(ce.dtype)])  # (M + B,)
        d2l_mlm = (ce * weights).sum() / (B * self.slots)
        nsp_logits = m.nsp(m.pooler(hidden))  # (B, 2)
        nsp = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
        return D2LOutput(
            logits[: len(targets)],
            targets,
            nsp_logits,
            d2l_mlm + nsp,
            d2l_mlm,
            nsp,
            ce[: len(targets)].mean(),
        )


def run(cfg: PretrainJob, out: Path, data_dir: str | None = None) -> dict:
    t0 = time.perf_counter()

    # ---- corpus -> tokenizer -> sentence pairs
    path = data_path(data_dir, cfg.data.path)
    if cfg.data.source == "wikitext":
        documents = read_wikitext(path, cfg.data.lowercase, cfg.data.detokenize)
    else:
        documents = read_text_folder(path, lowercase=cfg.data.lowercase)
    documents = documents[: cfg.data.max_documents]
    sentences = [s for doc in documents for s in doc]
    if cfg.tokenizer.kind == "word":
        tokenizer = train_word_level(sentences, cfg.tokenizer.min_frequency)
    elif cfg.tokenizer.kind == "wordpiece":
        tokenizer = train_wordpiece(sentences, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    else:
        tokenizer = load_tokenizer(data_path(data_dir, cfg.tokenizer.path))
    specials = special_ids(tokenizer)
    pairs = make_nsp_pairs(
        tokenize_documents(tokenizer, documents), specials, cfg.max_len, cfg.seed, cfg.drop_long
    )
    n = len(pairs["next_sentence_label"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    n_eval = min(cfg.eval_pairs, n // 10)
    eval_pairs = {k: v[order[:n_eval]] for k, v in pairs.items()}
    train_pairs = {k: v[order[n_eval:]] for k, v in pairs.items()}

    # ---- model
    vocab_size = tokenizer.get_vocab_size()
    m = cfg.model
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_len=cfg.max_len, dropout=m.dropout,
        attention_dropout=m.dropout, pad_id=specials.pad, pre_ln=m.pre_ln,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = BertForPreTraining(config, nsp=True)
    d2l = None
    if cfg.mlm_loss == "d2l_pytorch":
        d2l = D2LLoss(model, round(cfg.max_len * cfg.mask_prob), specials.unk)
    logged = LossLog(model, d2l)

    # ---- train
    collate = pretraining_collate(specials, vocab_size, cfg.mask_prob)
    source = TensorBatchSource(train_pairs, cfg.batch_size, cfg.seed, collate=collate)
    evaluate = None
    if n_eval:
        scores = evaluate_pretraining(eval_pairs, collate, batch_size=256, seed=cfg.seed)

        def evaluate(wrapped: LossLog) -> dict[str, float]:
            return scores(wrapped.model)

    result = train(logged, source, cfg.train, out / "train", evaluate)

    # ---- save
    save_pretrained(out / MODEL_DIR, model, tokenizer, None)
    steps = len(logged.mlm)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731  (steps of this call; None on resume)
    return write_metrics(out, {
        "pairs_train": n - n_eval,
        "pairs_eval": n_eval,
        "vocab_size": vocab_size,
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "mlm_loss": cfg.mlm_loss,
        "mlm_loss_mean": mean(logged.mlm),  # D2L's figure: mean over the run
        "masked_mlm_loss_mean": mean(logged.masked_mlm),  # the correct loss
        "nsp_loss_mean": mean(logged.nsp),
        "mlm_loss_last": logged.mlm[-1] if steps else None,
        "eval": result.last_eval,
        "bert": dataclasses.asdict(config),
    })  # fmt: skip
