"""Read any system's output (run files) and ground truth (qrels), and align them into metric arrays.

Run formats
- TREC: `qid Q0 docid rank score tag`, whitespace separated, one retrieved document per line.
- CSV (.csv/.tsv) or Parquet (.parquet) with a header: a query column (`qid`, `query_id`, `query-id`,
  `user`, `user_id`), a document column (`docid`, `doc_id`, `corpus-id`, `item`, `item_id`) and `score`
  and/or `rank`.
Order inside a query: score descending; ties by the file's rank ascending, then by file order (the order
the system meant). trec_eval instead breaks score ties by docid descending, so on tied scores it can differ.
With only a rank column: rank ascending.

Qrels formats
- TREC: `qid iter docid rel` (iter ignored). BEIR TSV: header `query-id corpus-id score`, CRLF tolerated.
- CSV/Parquet: query and document columns as above, optional `rel`/`relevance`/`score`/`grade` (default 1).

Problems (malformed lines, duplicate (query, doc) entries, a run query absent from the qrels, a qrels query
absent from the run) are collected with file and line. errors="raise" (default) raises `RunFormatError`
listing them; errors="warn" emits one warning per file with the list and keeps going: malformed lines and
repeated duplicates are skipped, run-only queries are left out, qrels-only queries count as empty rankings
(every metric 0). Nothing is dropped silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

QUERY_COLUMNS = ("qid", "query_id", "query-id", "user", "user_id")
DOC_COLUMNS = ("docid", "doc_id", "corpus-id", "item", "item_id")
GRADE_COLUMNS = ("rel", "relevance", "score", "grade")


class RunFormatError(ValueError):
    """A run or qrels file has problems; the message lists them with file and line."""


@dataclass(frozen=True)
class Issue:
    path: str
    line: int  # 1-based line in the file (for Parquet: 1-based row + 1, as if a header line came first)
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Run:
    """Ranked document ids per query, best first."""

    path: str
    lists: dict[str, list[str]]
    first_line: dict[str, int]  # where each query first appears, for messages
    issues: list[Issue] = field(default_factory=list)


@dataclass
class Qrels:
    """Judged documents and grades per query."""

    path: str
    judgements: dict[str, dict[str, float]]
    first_line: dict[str, int]
    issues: list[Issue] = field(default_factory=list)


def report_issues(issues: list[Issue], errors: str, what: str) -> None:
    """Raise (errors="raise") or warn (errors="warn") with every issue listed (the first 50 verbatim)."""
    if errors not in ("raise", "warn"):
        raise ValueError(f"errors must be 'raise' or 'warn', got {errors!r}")
    if not issues:
        return
    issues.sort(key=lambda i: (i.path, i.line))  # file order, whatever check found them
    shown = "\n".join(f"  {i}" for i in issues[:50])
    more = f"\n  ... and {len(issues) - 50} more" if len(issues) > 50 else ""
    message = f"{len(issues)} problem(s) in {what}:\n{shown}{more}"
    if errors == "raise":
        raise RunFormatError(
            message + "\n(pass errors='warn' / --on-error warn to continue with them reported)"
        )
    warnings.warn(message, stacklevel=3)


def pick_column(
    columns: list[str], names: tuple[str, ...], path: str, role: str, required: bool = True
) -> str | None:
    found = [c for c in columns if c.lower() in names]
    if not found and required:
        raise RunFormatError(f"{path}: no {role} column; expected one of {names}, got {columns}")
    return found[0] if found else None


def read_table(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        sep = "\t" if path.suffix == ".tsv" else ","
        return pl.read_csv(path, separator=sep, infer_schema=False)  # all strings: ids stay as written
    except Exception as err:  # polars raises several error types for malformed files
        raise RunFormatError(f"{path}: cannot parse as a table: {err}") from err


def _table_rows(path: Path, cols: list[str | None]) -> list[tuple[int, list[str | None]]]:
    frame = read_table(path)
    data = [frame[c].cast(pl.String).to_list() if c else [None] * frame.height for c in cols]
    return [(i + 2, list(vals)) for i, vals in enumerate(zip(*data))]  # line 1 is the header


def _float(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _run_rows(path: Path) -> tuple[list[tuple[int, str, str, float | None, float | None]], list[Issue]]:
    """(line, qid, docid, score, rank) rows and parse issues, from a TREC or tabular run."""
    rows, issues = [], []
    if path.suffix in (".csv", ".tsv", ".parquet"):
        frame_cols = read_table(path).columns
        q = pick_column(frame_cols, QUERY_COLUMNS, str(path), "query")
        d = pick_column(frame_cols, DOC_COLUMNS, str(path), "document")
        s = pick_column(frame_cols, ("score",), str(path), "score", required=False)
        r = pick_column(frame_cols, ("rank",), str(path), "rank", required=False)
        if s is None and r is None:
            raise RunFormatError(f"{path}: a run needs a 'score' or a 'rank' column, got {frame_cols}")
        for line, (qid, doc, score, rank) in _table_rows(path, [q, d, s, r]):
            sc, rk = _float(score), _float(rank)
            if not qid or not doc or (s and sc is None) or (r and rk is None):
                issues.append(
                    Issue(str(path), line, f"missing or non-numeric value in {(qid, doc, score, rank)}")
                )
                continue
            rows.append((line, qid, doc, sc, rk))
        return rows, issues
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 6:
                issues.append(
                    Issue(
                        str(path), line, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}"
                    )
                )
                continue
            rank, score = _float(parts[3]), _float(parts[4])
            if rank is None or score is None:
                issues.append(
                    Issue(str(path), line, f"rank {parts[3]!r} and score {parts[4]!r} must be finite numbers")
                )
                continue
            rows.append((line, parts[0], parts[2], score, rank))
    return rows, issues


def read_run(path: str | Path, errors: str = "raise") -> Run:
    """Read a TREC / CSV / Parquet run into ranked lists (see the module docstring for formats and order)."""
    path = Path(path)
    rows, issues = _run_rows(path)
    by_query: dict[str, list[tuple[float, float, int, str]]] = {}
    first_line: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for line, qid, doc, score, rank in rows:
        if (qid, doc) in seen:
            issues.append(
                Issue(
                    str(path),
                    line,
                    f"duplicate entry for query {qid!r}, doc {doc!r} (first on line {seen[qid, doc]}); kept the first",
                )
            )
            continue
        seen[qid, doc] = line
        first_line.setdefault(qid, line)
        # sort key: score descending (when present), then rank ascending, then file order
        by_query.setdefault(qid, []).append(
            (-score if score is not None else 0.0, rank if rank is not None else 0.0, line, doc)
        )
    report_issues(issues, errors, str(path))
    lists = {q: [doc for *_, doc in sorted(entries)] for q, entries in by_query.items()}
    return Run(str(path), lists, first_line, issues)


def read_qrels(path: str | Path, errors: str = "raise") -> Qrels:
    """Read TREC qrels, BEIR TSV qrels (header `query-id corpus-id score`) or CSV/Parquet judgements."""
    path = Path(path)
    issues: list[Issue] = []
    rows: list[tuple[int, str, str, float]] = []
    with open(path, "rb") as f:
        head = f.readline().decode("utf-8", errors="replace").strip().lower()
    first_token = head.replace(",", " ").split()[0] if head.split() else ""
    if path.suffix in (".csv", ".parquet") or first_token in QUERY_COLUMNS:  # a header names its columns
        frame_cols = read_table(path).columns
        q = pick_column(frame_cols, QUERY_COLUMNS, str(path), "query")
        d = pick_column(frame_cols, DOC_COLUMNS, str(path), "document")
        g = pick_column(frame_cols, GRADE_COLUMNS, str(path), "grade", required=False)
        for line, (qid, doc, grade) in _table_rows(path, [q, d, g]):
            value = 1.0 if g is None else _float(grade.strip() if grade else grade)
            if not qid or not doc or value is None:
                issues.append(Issue(str(path), line, f"missing or non-numeric value in {(qid, doc, grade)}"))
                continue
            rows.append((line, qid.strip(), doc.strip(), value))
    else:
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                parts = text.split()
                if not parts:
                    continue
                grade = _float(parts[3]) if len(parts) == 4 else None
                if grade is None:
                    issues.append(
                        Issue(
                            str(path),
                            line,
                            f"expected 'qid iter docid rel' with a numeric rel, got {text.strip()!r}",
                        )
                    )
                    continue
                rows.append((line, parts[0], parts[2], grade))
    judgements: dict[str, dict[str, float]] = {}
    first_line: dict[str, int] = {}
    for line, qid, doc, grade in rows:
        docs = judgements.setdefault(qid, {})
        first_line.setdefault(qid, line)
        if doc in docs:
            issues.append(
                Issue(str(path), line, f"duplicate judgement for query {qid!r}, doc {doc!r}; kept the first")
            )
            continue
        docs[doc] = grade
    report_issues(issues, errors, str(path))
    return Qrels(str(path), judgements, first_line, issues)


@dataclass(frozen=True)
class Aligned:
    """Arrays ready for `metrics.evaluate_ranked`, queries in sorted qrels order."""

    qids: list[str]  # (Q,)
    ranked: np.ndarray  # (Q, K) int doc indices, -1 padding
    rel_ids: np.ndarray  # (Q, R) int doc indices, -1 padding
    rel_grades: np.ndarray  # (Q, R) float
    docs: list[str]  # doc index -> doc id, for per-document data (popularity, features)
    issues: list[Issue]


def align(run: Run, qrels: Qrels, depth: int | None = None, errors: str = "raise") -> Aligned:
    """Map both files' doc ids to shared integers, over the qrels' queries; truncate runs at `depth`."""
    issues = [
        Issue(run.path, run.first_line[q], f"query {q!r} is not in the qrels {qrels.path}")
        for q in run.lists
        if q not in qrels.judgements
    ]
    qids = sorted(qrels.judgements)
    issues += [
        Issue(qrels.path, qrels.first_line[q], f"query {q!r} has no results in the run {run.path}")
        for q in qids
        if q not in run.lists
    ]
    report_issues(issues, errors, f"{run.path} vs {qrels.path}")
    vocab: dict[str, int] = {}
    lists = [run.lists.get(q, [])[:depth] for q in qids]
    judged = [qrels.judgements[q] for q in qids]
    ranked = np.full((len(qids), max((len(x) for x in lists), default=0)), -1, dtype=np.int64)
    rel_ids = np.full((len(qids), max((len(x) for x in judged), default=0)), -1, dtype=np.int64)
    rel_grades = np.zeros(rel_ids.shape)
    for i, (docs, judgement) in enumerate(zip(lists, judged)):
        ranked[i, : len(docs)] = [vocab.setdefault(d, len(vocab)) for d in docs]
        rel_ids[i, : len(judgement)] = [vocab.setdefault(d, len(vocab)) for d in judgement]
        rel_grades[i, : len(judgement)] = list(judgement.values())
    return Aligned(qids, ranked, rel_ids, rel_grades, list(vocab), issues)
