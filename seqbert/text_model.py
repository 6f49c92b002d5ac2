"""Text models for people: `TextModel` (from_pretrained / fit / evaluate / predict / save_pretrained), the
saved-model format, evaluation callbacks for `seqbert.training.loop.train`, and `seqbert text predict`.

Above the layers it uses (`seqbert.tasks.text` for the task pieces, `seqbert.training` for the loop and
checkpoint files, `seqbert.evaluation` for entity-level F1), as `seqbert.recommender` is for items.

A saved model is one directory (`save_pretrained`, `TextModel.from_pretrained`): `model.safetensors`,
`model.json` (the BertConfig under "bert" and, for fine-tuned models, the task under "task") and
`tokenizer.json`; a `seqbert train` run keeps its final model in `RUN_DIR/model/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from seqbert.data.glue import ClassificationData, TaggingData
from seqbert.data.text import encode_texts, encode_words, load_tokenizer
from seqbert.evaluation.ner import entity_scores
from seqbert.model.bert import BertConfig
from seqbert.model.hf import config_from_hf, load_hf_model
from seqbert.tasks import text as tasks_text
from seqbert.tasks.text import (
    INPUTS,
    MODEL_DIR,
    Batch,
    TextTask,
    batches_in_order,
    build_classifier,
    classification_collate,
)
from seqbert.training.checkpoint import atomic_file, load_model_state, save_model
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, TrainResult, train


def load_backbone(init: str, init_dir: str | Path | None, dropout: float | None = None):
    """(BertConfig, tokenizer, weights or None) for `init`:

    "scratch": architecture and tokenizer from `init_dir` (a seqbert run or a HF directory), random weights;
    "seqbert": all three from a seqbert model directory (`save_pretrained`) or the run holding it in `model/`;
    "hf":      all three from a Hugging Face BERT directory (None: the bundled all-MiniLM-L6-v2).
    """
    if init not in ("scratch", "seqbert", "hf"):
        raise ValueError(f"init must be 'scratch', 'seqbert' or 'hf', got {init!r}")
    directory = (
        Path(init_dir) if init_dir is not None else (tasks_text.minilm_dir() if init != "seqbert" else None)
    )
    if directory is None:
        raise ValueError("init='seqbert' needs init_dir, a pretraining run directory")
    seqbert_run = (directory / "model" / "model.json").exists() or (directory / "model.json").exists()
    if not seqbert_run:  # a Hugging Face directory
        if init == "seqbert" or not (directory / "config.json").exists():
            hint = "; use init='hf' for Hugging Face weights" if (directory / "config.json").exists() else ""
            raise ValueError(
                f"{directory}: expected a seqbert run (model/model.json) or a Hugging Face directory "
                f"(config.json){hint}"
            )
        config = config_from_hf(json.loads((directory / "config.json").read_text()))
        tokenizer = load_tokenizer(directory)
        weights = "hf" if init == "hf" else None
    else:
        if init == "hf":
            raise ValueError(
                f"{directory} is a seqbert run, not a Hugging Face directory; use init='seqbert'"
            )
        model_dir = directory / "model" if (directory / "model" / "model.json").exists() else directory
        state, meta = load_model_state(model_dir)
        if "bert" not in meta:
            raise ValueError(f"{model_dir}/model.json has no 'bert' config; not a seqbert text run")
        config = BertConfig(**meta["bert"])
        tokenizer = _saved_tokenizer(model_dir)
        weights = state if init == "seqbert" else None
    if dropout is not None:
        config = dataclasses.replace(config, dropout=dropout, attention_dropout=dropout)
    return config, tokenizer, weights


def init_classifier(model: nn.Module, weights, init_dir: str | Path | None) -> list[str]:
    """Copy pretrained weights into `model`; return the names left freshly initialised (the heads)."""
    if weights is None:
        return [n for n, _ in model.named_parameters()]
    if weights == "hf":
        _, fresh = load_hf_model(init_dir if init_dir is not None else tasks_text.minilm_dir(), model)
        return fresh
    target = model.state_dict()
    # a BertForPreTraining state shares `bert.*` and `pooler.*` names with the classifiers
    usable = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    if not any(k.startswith("bert.") for k in usable):
        raise ValueError("the pretrained weights hold no `bert.*` encoder tensors of matching shape")
    model.load_state_dict(usable, strict=False)
    return [k for k in target if k not in usable]


def save_pretrained(
    directory: str | Path, model: nn.Module, tokenizer: Tokenizer, task: TextTask | None
) -> Path:
    """One directory = one model: `model.safetensors`, `model.json` ({"bert": BertConfig, "task": TextTask,
    absent for a pretraining model}) and `tokenizer.json`, each written atomically. Returns the directory."""
    directory = Path(directory)
    meta = {"bert": dataclasses.asdict(model.config)}
    if task is not None:
        meta["task"] = dataclasses.asdict(task)
    save_model(directory, model, meta)
    with atomic_file(directory / "tokenizer.json") as tmp:
        tokenizer.save(str(tmp))
    return directory


def saved_model_dir(path: str | Path) -> Path:
    """A saved text model's directory: `path` itself, or `path/model/` when `path` is a run directory."""
    path = Path(path)
    return path / MODEL_DIR if (path / MODEL_DIR / "model.json").exists() else path


def load_text_model(path: str | Path) -> tuple[nn.Module, Tokenizer, TextTask]:
    """A fine-tuned model directory (or the run directory holding it in `model/`) -> (model in eval mode,
    tokenizer, task)."""
    directory = saved_model_dir(path)
    meta_path = directory / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path}: not a seqbert text model (expected model.json or model/model.json)")
    state, meta = load_model_state(directory)
    if "task" not in meta or "bert" not in meta:
        raise ValueError(f"{meta_path}: no 'task' entry; a pretraining model, not a fine-tuned one")
    task = TextTask(meta["task"]["kind"], tuple(meta["task"]["labels"]), meta["task"]["max_len"])
    model = build_classifier(task.kind, BertConfig(**meta["bert"]), len(task.labels))
    model.load_state_dict(state)
    return model.eval(), _saved_tokenizer(directory), task


def _saved_tokenizer(model_dir: Path) -> Tokenizer:
    # runs made before models were self-contained keep tokenizer.json in the run directory, one level up
    inside = model_dir / "tokenizer.json"
    return load_tokenizer(inside if inside.exists() else model_dir.parent / "tokenizer.json")


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, tensors: Batch, batch_size: int = 64) -> list[torch.Tensor]:
    """Per-row logits in the original row order: (C,) for sequence tasks, (L_row, C) for token tasks."""
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * tensors["input_ids"].shape[0]
    for rows, batch in batches_in_order({k: tensors[k] for k in INPUTS}, batch_size):
        logits = model({k: v.to(device) for k, v in batch.items()}).logits.float().cpu()  # (B, C) | (B, L, C)
        for i, row in enumerate(rows.tolist()):
            out[row] = logits[i]
    return out


def classification_scores(pred: list[int], gold: list[int]) -> dict[str, float]:
    """accuracy = mean(pred == gold); for two classes also F1 of class 1 = 2 TP / (2 TP + FP + FN)."""
    if len(pred) != len(gold) or not gold:
        raise ValueError(f"need equally many predictions and labels, got {len(pred)} and {len(gold)}")
    out = {"accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold)}
    if set(gold) | set(pred) <= {0, 1}:
        tp = sum(p == 1 and g == 1 for p, g in zip(pred, gold))
        wrong = sum(p != g for p, g in zip(pred, gold))
        out["f1"] = 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0
    return out


def evaluate_classification(tensors: Batch, batch_size: int = 64) -> Callable[[nn.Module], dict[str, float]]:
    """evaluate(model) -> accuracy (and F1) on `tensors` (input tensors plus `labels` (N,))."""
    gold = tensors["labels"].tolist()

    def evaluate(model: nn.Module) -> dict[str, float]:
        pred = [int(x.argmax()) for x in predict_logits(model, tensors, batch_size)]
        return classification_scores(pred, gold)

    return evaluate


def word_tags(
    logits: torch.Tensor, word_index: torch.Tensor, num_words: int, labels: tuple[str, ...]
) -> list[str]:
    """First-sub-token argmax per word; words lost to truncation get "O"."""
    tags = ["O"] * num_words
    best = logits.argmax(dim=-1)  # (L,)
    for position, word in enumerate(word_index[: len(best)].tolist()):
        if word >= 0:
            tags[word] = labels[int(best[position])]
    return tags


def evaluate_tagging(
    tensors: Batch, gold: list[list[str]], labels: tuple[str, ...], batch_size: int = 64
) -> Callable[[nn.Module], dict[str, float]]:
    """evaluate(model) -> entity-level precision/recall/F1 (conlleval) on whole words, all words counted."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, tensors, batch_size)
        pred = [word_tags(lg, tensors["word_index"][n], len(gold[n]), labels) for n, lg in enumerate(logits)]
        return entity_scores(gold, pred)

    return evaluate


def evaluate_pretraining(
    tensors: Batch, collate: Callable[[Batch, torch.Generator], Batch], batch_size: int = 64, seed: int = 0
) -> Callable[[nn.Module], dict[str, float]]:
    """evaluate(model) -> mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy with a fixed masking (the same
    every call); losses are means over masked tokens / pairs (ln 2 = 0.693 is chance for NSP)."""
    batches = []
    for start in range(0, tensors["input_ids"].shape[0], batch_size):
        raw = {k: v[start : start + batch_size] for k, v in tensors.items()}
        batches.append(collate(raw, torch.Generator().manual_seed(seed + start)))

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        loss_sum = correct = masked = nsp_correct = nsp_sum = rows = 0.0
        for batch in batches:
            out = model({k: v.to(device) for k, v in batch.items()})
            labels = out.mlm_labels
            loss_sum += F.cross_entropy(out.mlm_logits.float(), labels, reduction="sum").item()
            correct += (out.mlm_logits.argmax(-1) == labels).sum().item()
            masked += labels.numel()
            nsp_labels = batch["next_sentence_label"].to(device)
            nsp_correct += (out.nsp_logits.argmax(-1) == nsp_labels).sum().item()
            nsp_sum += F.cross_entropy(out.nsp_logits.float(), nsp_labels, reduction="sum").item()
            rows += batch["input_ids"].shape[0]
        return {
            "mlm_loss": loss_sum / max(masked, 1),
            "mlm_accuracy": correct / max(masked, 1),
            "nsp_loss": nsp_sum / max(rows, 1),
            "nsp_accuracy": nsp_correct / max(rows, 1),
        }

    return evaluate


# ---------------------------------------------------------------------------------------------- prediction


def predict(
    model: nn.Module, tokenizer: Tokenizer, task: TextTask, texts: list[str], pairs: list[str] | None = None
) -> list[dict]:
    """New text -> one dict per input: {"label", "scores"} for sequence/pair tasks, {"words", "tags"} for
    token tasks (words split on whitespace)."""
    if task.kind == "pair" and (pairs is None or len(pairs) != len(texts)):
        raise ValueError("a sentence-pair model needs one second sentence (--pair) per text")
    model.eval()
    if task.kind == "token":
        words = [t.split() for t in texts]
        tensors = encode_words(tokenizer, words, None, task.max_len)
        logits = predict_logits(model, tensors)
        return [
            {"words": w, "tags": word_tags(lg, tensors["word_index"][n], len(w), task.labels)}
            for n, (w, lg) in enumerate(zip(words, logits))
        ]
    tensors = encode_texts(tokenizer, texts, pairs if task.kind == "pair" else None, task.max_len)
    out = []
    for logits in predict_logits(model, tensors):
        probs = logits.softmax(-1).tolist()
        out.append({"label": task.labels[int(logits.argmax())], "scores": dict(zip(task.labels, probs))})
    return out


# ---------------------------------------------------------------------------------------------- the model


@dataclass(eq=False)
class TextModel:
    """A text classifier or tagger with its tokenizer and task: load, fine-tune, evaluate, predict, save.

        clf = TextModel.from_pretrained(minilm_dir(), labels=("negative", "positive"), max_len=64)
        clf.fit(read_sst2("sst2/train.tsv"), TrainConfig(max_steps=500, lr=5e-5), out="runs/sst2")
        clf.evaluate(read_sst2("sst2/dev.tsv"))       # {"accuracy": ..., "f1": ...}
        clf.save_pretrained("runs/sst2/model")        # TextModel.from_pretrained(...) loads it back

    Data are `seqbert.data.glue` objects: `ClassificationData` (texts, optional pairs, int labels indexing
    `task.labels`) for kinds "sequence"/"pair", `TaggingData` (words, tag strings) for kind "token".
    `fresh`: the parameters not loaded from the checkpoint (a new head), empty for a fine-tuned model.
    """

    model: nn.Module
    tokenizer: Tokenizer
    task: TextTask
    fresh: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path | None = None,
        labels: tuple[str, ...] | list[str] | None = None,
        kind: str = "sequence",
        max_len: int | None = None,
        *,
        init: str | None = None,
        dropout: float | None = None,
    ) -> TextModel:
        """Without `labels`: the fine-tuned model saved in `directory` (or in `directory/model/`).

        With `labels`: a new `kind` model ("sequence", "pair" or "token") with a fresh head on the encoder
        from `directory`: a seqbert model or run directory, a Hugging Face BERT directory, or None for the
        bundled all-MiniLM-L6-v2. `init` forces the source ("seqbert" or "hf"; default: detected) or
        "scratch" (architecture and tokenizer only, random weights). `max_len` defaults to
        min(128, the encoder's). The head's initial weights come from torch's global RNG (seed it first).
        """
        if labels is None:
            if directory is None:
                raise ValueError(
                    "from_pretrained without labels loads a fine-tuned model: give its directory"
                )
            return cls(*load_text_model(directory))
        if init is None:
            seqbert_model = directory is not None and (saved_model_dir(directory) / "model.json").exists()
            init = "seqbert" if seqbert_model else "hf"
        config, tokenizer, weights = load_backbone(init, directory, dropout)
        max_len = max_len if max_len is not None else min(128, config.max_len)
        if max_len > config.max_len:
            raise ValueError(f"max_len={max_len} exceeds the encoder's max_len={config.max_len}")
        task = TextTask(kind, tuple(labels), max_len)
        model = build_classifier(kind, config, len(task.labels))
        fresh = init_classifier(model, weights, directory)
        return cls(model, tokenizer, task, fresh)

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(directory, self.model, self.tokenizer, self.task)

    def encode(self, data: ClassificationData | TaggingData, with_labels: bool = True) -> Batch:
        """Data -> model rows (N, L) (+ `labels`); token tasks also keep `word_index` (N, L)."""
        if self.task.kind == "token":
            if not isinstance(data, TaggingData):
                raise TypeError(f"a token model needs TaggingData, got {type(data).__name__}")
            tags = None
            if with_labels:
                tag_id = {t: i for i, t in enumerate(self.task.labels)}
                unknown = sorted({t for s in data.tags for t in s} - set(tag_id))
                if unknown:
                    raise ValueError(f"tags {unknown} are not among the model's tags {self.task.labels}")
                tags = [[tag_id[t] for t in s] for s in data.tags]
            return encode_words(self.tokenizer, data.words, tags, self.task.max_len)
        if not isinstance(data, ClassificationData):
            raise TypeError(f"a {self.task.kind} model needs ClassificationData, got {type(data).__name__}")
        if (data.pairs is not None) != (self.task.kind == "pair"):
            raise ValueError(f"a {self.task.kind} model got {'pairs' if data.pairs else 'single texts'}")
        tensors = encode_texts(self.tokenizer, data.texts, data.pairs, self.task.max_len)
        if with_labels:
            bad = sorted({y for y in data.labels if not 0 <= y < len(self.task.labels)})
            if bad:
                raise ValueError(
                    f"labels {bad} are outside 0..{len(self.task.labels) - 1} {self.task.labels}"
                )
            tensors["labels"] = torch.tensor(data.labels, dtype=torch.long)
        return tensors

    def evaluator(
        self, data: ClassificationData | TaggingData, batch_size: int = 128
    ) -> Callable[[nn.Module], dict[str, float]]:
        """evaluate(model) on `data`: accuracy (+ F1 for two classes), or entity-level P/R/F1 for tags."""
        if self.task.kind == "token":
            return evaluate_tagging(self.encode(data, False), data.tags, self.task.labels, batch_size)
        return evaluate_classification(self.encode(data), batch_size)

    def fit(
        self,
        data: ClassificationData | TaggingData,
        config: TrainConfig,
        out: str | Path,
        *,
        eval_data: ClassificationData | TaggingData | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        seed: int = 0,
    ) -> TrainResult:
        """Fine-tune with `seqbert.training.train` (checkpoints and metrics.jsonl under `out`; a second call
        on the same `out` resumes); evaluated on `eval_data` every `config.eval_every` steps and at the end."""
        tensors = self.encode(data)
        tensors.pop("word_index", None)  # alignment is for evaluation; training rows carry labels only
        source = TensorBatchSource(tensors, batch_size, seed, collate=classification_collate)
        evaluate = self.evaluator(eval_data, eval_batch_size) if eval_data is not None else None
        return train(self.model, source, config, out, evaluate)

    @torch.no_grad()
    def evaluate(self, data: ClassificationData | TaggingData, batch_size: int = 128) -> dict[str, float]:
        self.model.eval()
        return self.evaluator(data, batch_size)(self.model)

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        return predict(self.model, self.tokenizer, self.task, texts, pairs)


def add_text_parsers(subparsers: argparse._SubParsersAction) -> None:
    """`seqbert text predict RUN_DIR --text ... [--pair ...]` (training: `seqbert train`, jobs classify and
    token_classify)."""
    text = subparsers.add_parser("text", help="text models: predictions from a fine-tuned run")
    commands = text.add_subparsers(dest="text_command", required=True)
    p = commands.add_parser("predict", help="classify or tag new text with a fine-tuned run directory")
    p.add_argument("run_dir", type=Path, help="a fine-tuning run directory, or the model directory in it")
    p.add_argument("--text", action="append", required=True, help="input text; repeat for several")
    p.add_argument("--pair", action="append", help="second sentence for pair tasks, one per --text")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Print one JSON line per --text."""
    for row in TextModel.from_pretrained(args.run_dir).predict(args.text, args.pair):
        sys.stdout.write(json.dumps(row) + "\n")
    return 0
