"""Entity-level precision, recall and F1 for sequence labelling, as the CoNLL `conlleval` script computes them.

A chunk (entity) is a maximal run of tags of one type, with boundaries decided by conlleval's
`startOfChunk`/`endOfChunk` rules: besides B-X, an I-X that follows O or a different type also starts a new
chunk (so ill-formed IOB2 output is still scored, not rejected); E-/S- tags (IOBES) are understood too. A
predicted chunk counts as correct only if its type, start and end all match a gold chunk.

    precision = |gold ∩ pred| / |pred|,   recall = |gold ∩ pred| / |gold|,   F1 = 2 P R / (P + R)

with 0 when a denominator is 0. Scores are micro-averaged over all chunks of all sentences (conlleval's
"overall" line; seqeval's default `f1_score`).
"""

from __future__ import annotations


def _split(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    if tag == "O" or tag == ".":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I", "E", "S") or not kind:
        raise ValueError(f"tag {tag!r} is not O or B-/I-/E-/S-<type>")
    return prefix, kind


def _ends(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval endOfChunk: does a chunk end between the previous token and this one?"""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != kind


def _starts(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """conlleval startOfChunk: does a chunk start at this token?"""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != kind


def extract_entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """Chunks of one sentence as (type, start, end) with `end` inclusive."""
    entities: set[tuple[str, int, int]] = set()
    prev_tag, prev_type, start = "O", "", None
    for i, raw in enumerate([*tags, "O"]):  # a trailing O closes the last chunk
        tag, kind = _split(raw)
        if start is not None and _ends(prev_tag, tag, prev_type, kind):
            entities.add((prev_type, start, i - 1))
            start = None
        if _starts(prev_tag, tag, prev_type, kind):
            start = i
        prev_tag, prev_type = tag, kind
    return entities


def _prf(correct: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Micro P/R/F1 over all sentences, plus per-type `f1_<TYPE>`; keys precision, recall, f1."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences, pred has {len(pred)}")
    gold_set, pred_set = set(), set()
    for n, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {n}: {len(g)} gold tags but {len(p)} predicted tags")
        gold_set |= {(n, *e) for e in extract_entities(g)}
        pred_set |= {(n, *e) for e in extract_entities(p)}
    correct = gold_set & pred_set
    precision, recall, f1 = _prf(len(correct), len(pred_set), len(gold_set))
    out = {"precision": precision, "recall": recall, "f1": f1}
    for kind in sorted({e[1] for e in gold_set | pred_set}):
        n_c = sum(1 for e in correct if e[1] == kind)
        n_p = sum(1 for e in pred_set if e[1] == kind)
        n_g = sum(1 for e in gold_set if e[1] == kind)
        out[f"f1_{kind}"] = _prf(n_c, n_p, n_g)[2]
    return out
