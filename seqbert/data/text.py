"""Text -> token ids, with the Hugging Face `tokenizers` library; documents -> sentence pairs for NSP.

Tokenisers are plain `tokenizers.Tokenizer` objects (WordPiece as in BERT, or word-level for the D2L
setting), carrying BERT's template post-processor so that `encode(a, b)` yields `[CLS] A [SEP] B [SEP]`
with segment ids 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`. Special tokens are [PAD] [UNK] [CLS] [SEP]
[MASK]; a trained vocabulary puts them first (ids 0..4), a loaded one keeps its own ids (bert-base-uncased:
0, 100, 101, 102, 103), so callers always ask `special_ids(tokenizer)`.

This is the one tokeniser stack: text tasks, embeddings (`seqbert.retrieval.embed`) and cross-encoders
(`seqbert.tasks.rerank`) all load with `load_tokenizer` and encode with `encode_texts` / `encode_words`.
Encoded data is returned as tensors padded to the longest row (not to max_len); the batch collators trim
each batch to its own longest row again (dynamic padding). Shape legend: N rows, L length.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from seqbert.data.masking import IGNORE_INDEX

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def all(self) -> tuple[int, ...]:
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    ids = {}
    for token in SPECIAL_TOKENS:
        value = tokenizer.token_to_id(token)
        if value is None:
            raise ValueError(f"tokenizer has no {token} token; expected all of {SPECIAL_TOKENS}")
        ids[token.strip("[]").lower()] = value
    return SpecialIds(**ids)


def _add_bert_template(tokenizer: Tokenizer) -> Tokenizer:
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tokenizer


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, lowercase: bool = True
) -> Tokenizer:
    """A BERT WordPiece tokenizer (BERT normaliser and pre-tokeniser, `##` continuation) trained on `texts`.

    The `tokenizers` trainer breaks count ties in hash-map order, so two trainings on the same text can
    differ in a few rare pieces (huggingface/tokenizers#1794); save the tokenizer with the run (recipes
    write `tokenizer.json`) and reuse that file rather than retraining.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
    )
    tokenizer.train_from_iterator(texts, trainer)
    return _add_bert_template(tokenizer)


def train_word_level(texts: Iterable[str], min_frequency: int = 5, lowercase: bool = False) -> Tokenizer:
    """A whitespace word-level vocabulary keeping words seen >= min_frequency times (D2L §15.8 uses 5)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(texts, trainer)
    return _add_bert_template(tokenizer)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load `tokenizer.json`, or a BERT `vocab.txt`, or a directory holding either (tokenizer.json first).

    A vocab.txt directory with `tokenizer_config.json` takes `do_lower_case` from it (default True, as
    for bert-base-uncased). Padding and truncation stored in the file are switched off: encoders here set
    their own.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).exists():
                return load_tokenizer(path / name)
        raise FileNotFoundError(f"{path}: expected tokenizer.json or vocab.txt in this directory")
    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: not a `tokenizers` tokenizer.json ({e})") from e
    else:
        lowercase = True
        config = path.parent / "tokenizer_config.json"
        if config.exists():
            lowercase = bool(json.loads(config.read_text()).get("do_lower_case", True))
        tokenizer = Tokenizer(models.WordPiece.from_file(str(path), unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
    try:
        special_ids(tokenizer)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if tokenizer.post_processor is None:
        _add_bert_template(tokenizer)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@contextmanager
def _truncating(tokenizer: Tokenizer, max_len: int) -> Iterator[Tokenizer]:
    """The tokenizer truncating to max_len (longest-first for pairs, the HF default) inside the block; its
    own setting is restored afterwards, so the caller's tokenizer is left as it was. (Setting and
    restoring is cheap; copying a 30k-word tokenizer per batch is not.)"""
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3 to hold [CLS] and [SEP], got {max_len}")
    saved_truncation, saved_padding = tokenizer.truncation, tokenizer.padding
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_len, strategy="longest_first")
    try:
        yield tokenizer
    finally:
        if saved_truncation is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**saved_truncation)
        if saved_padding is not None:
            tokenizer.enable_padding(**saved_padding)


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ints to the longest -> (N, L) long tensor."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def encode_texts(
    tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None = None, max_len: int = 128
) -> dict[str, torch.Tensor]:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` rows -> input_ids, token_type_ids, attention_mask (N, L)."""
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"texts and pairs differ in length: {len(texts)} vs {len(pairs)}")
    with _truncating(tokenizer, max_len) as tok:
        encodings = tok.encode_batch(list(texts) if pairs is None else list(zip(texts, pairs)))
    pad = special_ids(tokenizer).pad
    return {
        "input_ids": pad_rows([e.ids for e in encodings], pad),
        "token_type_ids": pad_rows([e.type_ids for e in encodings], 0),
        "attention_mask": pad_rows([e.attention_mask for e in encodings], 0),
    }


def encode_words(
    tokenizer: Tokenizer, words: list[list[str]], tags: list[list[int]] | None = None, max_len: int = 128
) -> dict[str, torch.Tensor]:
    """Pre-split words -> sub-word rows with word alignment for token classification.

    `labels` (N, L) carries a word's tag on its first sub-token and IGNORE_INDEX on the other sub-tokens,
    specials and padding (Devlin et al. 2019, §5.3). `word_index` (N, L) is the word's position on first
    sub-tokens and -1 elsewhere; words cut off by truncation appear nowhere (callers predict "O" for them).
    """
    if tags is not None and len(tags) != len(words):
        raise ValueError(f"words and tags differ in length: {len(words)} vs {len(tags)}")
    with _truncating(tokenizer, max_len) as tok:
        encodings = tok.encode_batch([list(w) for w in words], is_pretokenized=True)
    labels, word_index = [], []
    for n, enc in enumerate(encodings):
        row_labels, row_index, previous = [], [], None
        if tags is not None and len(tags[n]) != len(words[n]):
            raise ValueError(f"row {n}: {len(words[n])} words but {len(tags[n])} tags")
        for w in enc.word_ids:
            first = w is not None and w != previous
            row_index.append(w if first else -1)
            row_labels.append(tags[n][w] if first and tags is not None else IGNORE_INDEX)
            previous = w
        labels.append(row_labels)
        word_index.append(row_index)
    pad = special_ids(tokenizer).pad
    out = {
        "input_ids": pad_rows([e.ids for e in encodings], pad),
        "token_type_ids": pad_rows([e.type_ids for e in encodings], 0),
        "attention_mask": pad_rows([e.attention_mask for e in encodings], 0),
        "word_index": pad_rows(word_index, -1),
    }
    if tags is not None:
        out["labels"] = pad_rows(labels, IGNORE_INDEX)
    return out


# ---------------------------------------------------------------------------------------------------------
# pretraining corpora: documents (lists of sentences) -> NSP sentence pairs

_WIKITEXT_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def read_wikitext(path: str | Path, lowercase: bool = True, detokenize: bool = False) -> list[list[str]]:
    """WikiText `wiki.*.tokens` -> paragraphs as lists of sentences, exactly as D2L §15.9 `_read_wiki`.

    Each line is a paragraph; sentences are split on ' . '; paragraphs with fewer than two sentences
    (headings, blank lines) are dropped. `detokenize=True` rejoins `@-@`, `@,@`, `@.@` and maps `<unk>` to
    [UNK] (for WordPiece, which would otherwise split `<unk>` into pieces).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: WikiText file not found (expected e.g. wikitext-2/wiki.train.tokens)"
        )
    paragraphs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if len(line.split(" . ")) < 2:
            continue
        if detokenize:
            for old, new in _WIKITEXT_JOINS:
                line = line.replace(old, new)
            line = line.replace("<unk>", "[UNK]")
        line = line.strip()
        paragraphs.append((line.lower() if lowercase else line).split(" . "))
    return paragraphs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def read_text_folder(directory: str | Path, suffix: str = ".txt", lowercase: bool = False) -> list[list[str]]:
    """Every `*{suffix}` file under `directory` -> documents as lists of sentences.

    The google-research/bert layout is understood: a blank line separates documents (and so does a file
    boundary); each line is split further after '.', '!' or '?' followed by whitespace.
    """
    directory = Path(directory)
    files = sorted(directory.rglob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *{suffix} files to read")
    documents: list[list[str]] = []
    for file in files:
        current: list[str] = []
        for line in file.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                if current:
                    documents.append(current)
                current = []
                continue
            current.extend(s for s in _SENTENCE_END.split(line.lower() if lowercase else line) if s)
        if current:
            documents.append(current)
    return documents


def tokenize_documents(tokenizer: Tokenizer, documents: list[list[str]]) -> list[list[list[int]]]:
    """Sentences -> token ids without specials, keeping the document structure; empty sentences dropped."""
    flat = [s for doc in documents for s in doc]
    ids = [e.ids for e in tokenizer.encode_batch(flat, add_special_tokens=False)]
    out, start = [], 0
    for doc in documents:
        out.append([s for s in ids[start : start + len(doc)] if s])
        start += len(doc)
    return out


def make_nsp_pairs(
    documents: list[list[list[int]]],
    specials: SpecialIds,
    max_len: int,
    seed: int,
    drop_long: bool = False,
) -> dict[str, torch.Tensor]:
    """Consecutive sentences -> `[CLS] A [SEP] B [SEP]` rows; half keep the true next sentence.

    For each sentence A followed by B in a document: with probability 1/2 the row is (A, B) with
    next_sentence_label 0 ("B follows A", the Hugging Face convention), otherwise (A, R) with label 1 for R a
    random sentence of another document (Devlin et al. 2019, §3.1). Rows longer than max_len are dropped
    (`drop_long`, as D2L does) or trimmed from the end of the longer sentence (google-research/bert
    `truncate_seq_pair`). Returns input_ids, token_type_ids, attention_mask (N, L) and
    next_sentence_label (N,). A pure function of its arguments (pairs are drawn from `random.Random(seed)`).
    """
    rng = random.Random(seed)
    usable = [i for i, doc in enumerate(documents) if doc]
    if len(usable) < 2 or not any(len(doc) >= 2 for doc in documents):
        raise ValueError("make_nsp_pairs needs >= 2 non-empty documents and one with >= 2 sentences")
    rows, types, nsp = [], [], []
    budget = max_len - 3
    for d, doc in enumerate(documents):
        for i in range(len(doc) - 1):
            a = doc[i]
            if rng.random() < 0.5:
                b, label = doc[i + 1], 0
            else:
                other = rng.choice(usable)
                while other == d:
                    other = rng.choice(usable)
                b, label = rng.choice(documents[other]), 1
            if len(a) + len(b) > budget:
                if drop_long:
                    continue
                a, b = list(a), list(b)
                while len(a) + len(b) > budget:
                    (a if len(a) >= len(b) else b).pop()
            rows.append([specials.cls, *a, specials.sep, *b, specials.sep])
            types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
            nsp.append(label)
    if not rows:
        raise ValueError(f"no sentence pair fits max_len={max_len}")
    return {
        "input_ids": pad_rows(rows, specials.pad),
        "token_type_ids": pad_rows(types, 0),
        "attention_mask": pad_rows([[1] * len(r) for r in rows], 0),
        "next_sentence_label": torch.tensor(nsp, dtype=torch.long),
    }
