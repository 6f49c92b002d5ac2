"""Readers for the fine-tuning sets: SST-2 and MRPC (GLUE TSV files) and CoNLL-2003 NER.

Each reader takes a file path, checks the layout, and fails naming the file and line on anything
unexpected. Quote characters are literal in these files (GLUE is read with csv.QUOTE_NONE), so lines are
split on tabs by hand rather than with a CSV parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# CoNLL-2003 NER tags in IOB2 (Tjong Kim Sang & De Meulder 2003); the index is the class id
CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


@dataclass(frozen=True)
class ClassificationData:
    """Single sentences (`pairs is None`) or sentence pairs, with integer labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels) or (
            self.pairs is not None and len(self.pairs) != len(self.texts)
        ):
            raise ValueError("ClassificationData: texts, pairs and labels must have the same length")

    def subset(self, n: int | None) -> ClassificationData:
        """The first n examples (None or n >= len: all)."""
        if n is None or n >= len(self.texts):
            return self
        return ClassificationData(
            self.texts[:n], None if self.pairs is None else self.pairs[:n], self.labels[:n]
        )

    def sample(self, n: int | None, seed: int) -> ClassificationData:
        """A seeded random subset of n examples in file order (None or n >= len: all)."""
        keep = _sample_rows(len(self.texts), n, seed)
        if keep is None:
            return self
        pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
        return ClassificationData(pick(self.texts), pick(self.pairs), pick(self.labels))


@dataclass(frozen=True)
class TaggingData:
    """Sentences as word lists with one tag string per word."""

    words: list[list[str]]
    tags: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.words) != len(self.tags):
            raise ValueError("TaggingData: words and tags must have the same number of sentences")

    def subset(self, n: int | None) -> TaggingData:
        if n is None or n >= len(self.words):
            return self
        return TaggingData(self.words[:n], self.tags[:n])

    def sample(self, n: int | None, seed: int) -> TaggingData:
        """A seeded random subset of n sentences in file order (None or n >= len: all)."""
        keep = _sample_rows(len(self.words), n, seed)
        if keep is None:
            return self
        return TaggingData([self.words[i] for i in keep], [self.tags[i] for i in keep])


def _sample_rows(size: int, n: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a seeded random n of `size` rows (torch's generator, as the training loop's)."""
    if n is None or n >= size:
        return None
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].tolist())


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    return path.read_text(encoding=encoding).splitlines()


def _label(value: str, path: Path, lineno: int, allowed: tuple[str, ...] = ("0", "1")) -> int:
    if value.strip() not in allowed:
        raise ValueError(f"{path}:{lineno}: label {value!r} is not one of {allowed}")
    return int(value)


def read_sst2(path: str | Path) -> ClassificationData:
    """GLUE SST-2 `train.tsv`/`dev.tsv`: header `sentence\\tlabel`, label 0 = negative, 1 = positive."""
    path = Path(path)
    lines = _lines(path, "utf-8-sig")
    if not lines or lines[0].split("\t") != ["sentence", "label"]:
        raise ValueError(f"{path}:1: expected the header 'sentence<TAB>label' (an SST-2 train/dev file)")
    texts, labels = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected 2 tab-separated fields, got {len(fields)}")
        texts.append(fields[0].strip())
        labels.append(_label(fields[1], path, lineno))
    return ClassificationData(texts, None, labels)


def read_mrpc(path: str | Path) -> ClassificationData:
    """GLUE MRPC `train.tsv`/`dev.tsv`: `Quality, #1 ID, #2 ID, #1 String, #2 String` (UTF-8 with BOM).

    Quality is the label, 1 = paraphrase.
    """
    path = Path(path)
    lines = _lines(path, "utf-8-sig")
    if not lines or lines[0].split("\t")[0] != "Quality":
        raise ValueError(f"{path}:1: expected a header starting with 'Quality' (an MRPC train/dev file)")
    texts, pairs, labels = [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 5:
            raise ValueError(f"{path}:{lineno}: expected 5 tab-separated fields, got {len(fields)}")
        labels.append(_label(fields[0], path, lineno))
        texts.append(fields[3].strip())
        pairs.append(fields[4].strip())
    return ClassificationData(texts, pairs, labels)


def read_conll(path: str | Path, tag_column: int = -1) -> TaggingData:
    """CoNLL-2003 `token POS chunk NER` lines, blank lines between sentences; `-DOCSTART-` lines skipped."""
    path = Path(path)
    words: list[list[str]] = []
    tags: list[list[str]] = []
    sent_words: list[str] = []
    sent_tags: list[str] = []
    for lineno, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields:
            if sent_words:
                words.append(sent_words)
                tags.append(sent_tags)
            sent_words, sent_tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'token ... tag', got {line!r}")
        tag = fields[tag_column]
        if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-", "E-", "S-")):
            raise ValueError(f"{path}:{lineno}: tag {tag!r} is not IOB (O, B-X, I-X)")
        sent_words.append(fields[0])
        sent_tags.append(tag)
    if sent_words:
        words.append(sent_words)
        tags.append(sent_tags)
    return TaggingData(words, tags)
