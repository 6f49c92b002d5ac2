"""BEIR-format retrieval data: `corpus.jsonl`, `queries.jsonl`, `qrels/{split}.tsv` (Thakur et al. 2021).

corpus lines are `{"_id", "title", "text", ...}`, query lines `{"_id", "text", ...}`, qrels a
tab-separated `query-id  corpus-id  score` table with a header (BEIR writes CRLF line endings; both are
read). Every id stays a string, as in BEIR, so numeric-looking ids never lose leading zeros.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from seqbert.data import trec


@dataclass(frozen=True)
class BeirData:
    doc_ids: list[str]  # corpus order
    doc_texts: list[str]  # "title text" (BEIR's default title + " " + text), corpus order
    queries: dict[str, str]  # query id -> text, only the queries judged in the split
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def _read_jsonl(path: Path, keys: tuple[str, ...]) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: missing (BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
        )
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON object ({e.msg})") from e
            missing = [k for k in keys if k not in row]
            if not isinstance(row, dict) or missing:
                raise ValueError(f"{path}:{n}: expected an object with keys {list(keys)}, missing {missing}")
            rows.append(row)
    return rows


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """`query-id \\t corpus-id \\t score` (header optional) -> {query id: {doc id: score}}.

    Parsed by `seqbert.data.trec.read_qrels`, the one qrels reader (malformed and duplicate lines are
    errors naming file and line); BEIR grades must be integers.
    """
    frame = trec.read_qrels(Path(path)).frame
    fractional = frame.filter(pl.col("grade") != pl.col("grade").round())
    if fractional.height:
        line, grade = fractional.row(0, named=True)["line"], fractional.row(0, named=True)["grade"]
        raise ValueError(f"{path}:{line}: score {grade!r} is not an integer")
    qrels: dict[str, dict[str, int]] = {}
    for qid, doc, grade in frame.select("qid", "docid", "grade").iter_rows():
        qrels.setdefault(qid, {})[doc] = int(grade)
    return qrels


def load_beir(directory: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR dataset directory; keep only the queries judged in `qrels/{split}.tsv`."""
    directory = Path(directory)
    qrels = read_qrels(directory / "qrels" / f"{split}.tsv")
    corpus = _read_jsonl(directory / "corpus.jsonl", ("_id", "text"))
    doc_ids = [str(r["_id"]) for r in corpus]
    doc_texts = [f"{r['title']} {r['text']}" if r.get("title") else r["text"] for r in corpus]
    all_queries = {
        str(r["_id"]): r["text"] for r in _read_jsonl(directory / "queries.jsonl", ("_id", "text"))
    }
    unknown_q = [q for q in qrels if q not in all_queries]
    if unknown_q:
        raise ValueError(f"{directory}/qrels/{split}.tsv: query ids not in queries.jsonl: {unknown_q[:5]}")
    known_docs = set(doc_ids)
    unknown_d = sorted({d for rel in qrels.values() for d in rel if d not in known_docs})
    if unknown_d:
        raise ValueError(f"{directory}/qrels/{split}.tsv: corpus ids not in corpus.jsonl: {unknown_d[:5]}")
    queries = {q: all_queries[q] for q in qrels}
    return BeirData(doc_ids=doc_ids, doc_texts=doc_texts, queries=queries, qrels=qrels)


def judgements(data: BeirData, qids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The judged corpus rows (Q, R) of each query, -1 padded, and their relevance grades (Q, R): the
    `rel_ids` / `rel_grades` of `seqbert.evaluation.metrics.evaluate_ranked` and `seqbert.pipeline`."""
    row_of = {d: i for i, d in enumerate(data.doc_ids)}
    R = max(len(data.qrels[q]) for q in qids)
    rel_ids = np.full((len(qids), R), -1, dtype=np.int64)
    rel_grades = np.zeros((len(qids), R))
    for r, q in enumerate(qids):
        for j, (d, g) in enumerate(data.qrels[q].items()):
            rel_ids[r, j], rel_grades[r, j] = row_of[d], g
    return rel_ids, rel_grades


def drop_self_hits(ranked: np.ndarray, qids: list[str], data: BeirData) -> np.ndarray:
    """BEIR's evaluation rule: a retrieved document whose id equals the query's id is not counted. Such
    hits leave each row (Q, K); the rest move up and the row ends in -1 padding."""
    row_of = {d: i for i, d in enumerate(data.doc_ids)}
    out = np.asarray(ranked, dtype=np.int64).copy()
    for r, q in enumerate(qids):
        if q in row_of and (out[r] == row_of[q]).any():
            keep = out[r][out[r] != row_of[q]]
            out[r] = np.concatenate([keep, np.full(len(out[r]) - len(keep), -1)])
    return out


def holdout_split(qids: list[str], n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split query ids into (kept, held out): the held-out set is the `n` ids with the smallest
    sha1(f"{seed}:{id}"), so it depends only on the ids and the seed, never on file order or on which job
    asks; a job fine-tuning on `kept` and another tuning on `held out` agree without sharing a file.
    Both lists keep `qids`' order."""
    if not 0 < n < len(qids):
        raise ValueError(f"holdout of {n} queries: expected 1..{len(qids) - 1} (the split has {len(qids)})")
    rank = sorted(qids, key=lambda q: hashlib.sha1(f"{seed}:{q}".encode()).hexdigest())
    held = set(rank[:n])
    return [q for q in qids if q not in held], [q for q in qids if q in held]
