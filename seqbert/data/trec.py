"""Read run files (a system's ranked output) and qrels (graded judgements) into polars frames.

This is the one reader of both formats in seqbert: `seqbert.evaluation.runs` scores runs with it and
`seqbert.retrieval.beir` reads BEIR qrels with it. It is vectorised (polars string kernels, no Python loop
per line), so a 10 M-line run reads in seconds.

Run formats
- TREC: `qid Q0 docid rank score tag`, whitespace separated, one retrieved document per line.
- CSV (.csv/.tsv) or Parquet (.parquet) with a header: a query column (`qid`, `query_id`, `query-id`,
  `user`, `user_id`), a document column (`docid`, `doc_id`, `corpus-id`, `item`, `item_id`) and `score`
  and/or `rank` (a run with only a rank column gets score = -rank).
The reader keeps every line's score, rank and line number; ordering (which depends on the tie rule and,
for optimistic/pessimistic ties, on the qrels) is done by `seqbert.evaluation.runs.align`.

Qrels formats
- TREC: `qid iter docid rel` (iter ignored). BEIR (.tsv): `query-id corpus-id score` tab-separated, the
  header line optional, CRLF tolerated.
- CSV/Parquet: query and document columns as above, optional `rel`/`relevance`/`score`/`grade` (default 1).

Problems (malformed lines, duplicate (query, doc) entries) are collected with file and line.
errors="raise" (default) raises `RunFormatError` listing them; errors="warn" emits one warning per file
with the list and keeps going: malformed lines and repeated duplicates (all but the first) are skipped.
Nothing is dropped silently.
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
_FIELD = r"(\S+)"


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
    """One line per retrieved document: columns qid, docid (str), score, rank (float64, null when the
    file has no such column) and line (1-based, int64), in file order; duplicates already removed."""

    path: str
    frame: pl.DataFrame
    issues: list[Issue] = field(default_factory=list)

    @property
    def lists(self) -> dict[str, list[str]]:
        """qid -> doc ids in trec_eval order (score descending, ties by docid descending). For small runs."""
        ordered = self.frame.sort(["qid", "score", "docid"], descending=[False, True, True], nulls_last=True)
        grouped = ordered.group_by("qid", maintain_order=True).agg(pl.col("docid"))
        return dict(zip(grouped["qid"].to_list(), grouped["docid"].to_list()))

    @property
    def first_line(self) -> dict[str, int]:
        first = self.frame.group_by("qid").agg(pl.col("line").min())
        return dict(zip(first["qid"].to_list(), first["line"].to_list()))


@dataclass
class Qrels:
    """One line per judgement: columns qid, docid (str), grade (float64), line (int64); duplicates removed."""

    path: str
    frame: pl.DataFrame
    issues: list[Issue] = field(default_factory=list)

    @property
    def judgements(self) -> dict[str, dict[str, float]]:
        """qid -> {docid: grade}, in file order. Builds Python dicts: for small files and tests."""
        out: dict[str, dict[str, float]] = {}
        for qid, doc, grade in self.frame.select("qid", "docid", "grade").iter_rows():
            out.setdefault(qid, {})[doc] = grade
        return out

    @property
    def first_line(self) -> dict[str, int]:
        first = self.frame.group_by("qid").agg(pl.col("line").min())
        return dict(zip(first["qid"].to_list(), first["line"].to_list()))


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
    """A CSV/TSV (all columns as strings, so ids stay as written) or Parquet table."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        sep = "\t" if path.suffix == ".tsv" else ","
        return pl.read_csv(path, separator=sep, infer_schema=False)
    except Exception as err:  # polars raises several error types for malformed files
        raise RunFormatError(f"{path}: cannot parse as a table: {err}") from err


def _read_lines(path: Path) -> pl.DataFrame:
    """Every line of a text file as `text` (null for an empty line) with its 1-based `line` number."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        return pl.DataFrame({"text": [], "line": []}, schema={"text": pl.String, "line": pl.Int64})
    frame = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",  # a control character no run file holds: one column per line
        quote_char=None,
        new_columns=["text"],
        schema_overrides={"text": pl.String},
    )
    return frame.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))


def _split_fields(lines: pl.DataFrame, n: int) -> pl.DataFrame:
    """Split `text` on whitespace into f0..f{n-1}; a line with another field count gets nulls."""
    pattern = r"^\s*" + r"\s+".join([_FIELD] * n) + r"\s*$"
    fields = pl.col("text").str.extract_groups(pattern)
    return (
        lines.with_columns(fields.alias("_f"))
        .unnest("_f")
        .rename({str(i + 1): f"f{i}" for i in range(n)})
        .filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != ""))
    )


def _fast_fields(path: Path, n: int, keep: dict[int, str], floats: tuple[int, ...]) -> pl.DataFrame | None:
    """The common case, n fields split by single spaces or single tabs, through polars' CSV reader.

    Returns columns `keep` (field index -> name; fields in `floats` parsed as Float64, the rest strings)
    plus `line`, blank lines dropped, or None when any line is not of that shape or a float field does
    not parse (then `_split_fields` parses the file exactly and names each bad line): the regex path is
    ~5x slower and holds every line as text, so a well-formed 10 M-line run never takes it.
    """
    with open(path, "rb") as f:
        first = f.readline()
    schema = {f"f{i}": pl.Float64 if i in floats else pl.String for i in range(n)}
    try:
        frame = (
            pl.scan_csv(
                path,
                has_header=False,
                separator="\t" if b"\t" in first else " ",
                schema=schema,
                quote_char=None,
                row_index_name="line",
                row_index_offset=1,
            )
            .filter(pl.col("f0").is_not_null())  # a blank line reads as a row of nulls
            .select(
                pl.col("line").cast(pl.Int64),
                *[pl.col(f"f{i}").alias(name) for i, name in keep.items()],
                pl.col(f"f{n - 1}").is_not_null().alias("_complete"),  # fewer fields leave the last null
            )
            .collect()
        )
    except pl.exceptions.PolarsError:  # more fields than n (or runs of spaces), or a non-numeric field
        return None
    if not frame["_complete"].all():
        return None
    return frame.drop("_complete")


def _to_float_expr(text: pl.Expr) -> pl.Expr:
    """Strict float parse; inf/nan count as malformed (a ranking needs finite numbers)."""
    value = text.str.strip_chars().cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value).otherwise(None)


def _to_float(col: str) -> pl.Expr:
    return _to_float_expr(pl.col(col))


def _issues(frame: pl.DataFrame, path: Path, message: pl.Expr) -> list[Issue]:
    rows = frame.select("line", message.alias("m"))
    return [Issue(str(path), line, m) for line, m in rows.iter_rows()]


def _drop_duplicates(frame: pl.DataFrame, path: Path, what: str) -> tuple[pl.DataFrame, list[Issue]]:
    """Keep the first (qid, docid) line; report the others with the first's line number.

    A 64-bit hash of each pair, sorted in numpy, finds the candidates (a string group-by over 10 M lines
    costs ~1 GB); only rows whose hash repeats are compared exactly, so a collision is never a false report.
    """
    if frame.height == 0:
        return frame, []
    hashes = frame.select(pl.struct("qid", "docid").hash()).to_series().to_numpy()
    ordered = np.sort(hashes)  # a plain sort: ~8x faster than an argsort of 10 M random keys
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not repeated.size:
        return frame, []
    candidates = np.flatnonzero(np.isin(hashes, repeated))
    sub = frame[candidates].with_columns(pl.col("line").min().over("qid", "docid").alias("_first"))
    dup = sub.filter(pl.col("line") != pl.col("_first"))
    if dup.height == 0:  # hash collisions only
        return frame, []
    message = pl.format(
        f"duplicate {what} for query '{{}}', doc '{{}}' (first on line {{}}); kept the first",
        "qid",
        "docid",
        "_first",
    )
    kept = frame.filter(~pl.col("line").is_in(dup["line"].implode()))
    return kept, _issues(dup, path, message)


def read_run(path: str | Path, errors: str = "raise") -> Run:
    """Read a TREC / CSV / Parquet run (see the module docstring); lines stay in file order."""
    path = Path(path)
    issues: list[Issue] = []
    s = None
    if path.suffix in (".csv", ".tsv", ".parquet"):
        table = read_table(path)
        q = pick_column(table.columns, QUERY_COLUMNS, str(path), "query")
        d = pick_column(table.columns, DOC_COLUMNS, str(path), "document")
        s = pick_column(table.columns, ("score",), str(path), "score", required=False)
        r = pick_column(table.columns, ("rank",), str(path), "rank", required=False)
        if s is None and r is None:
            raise RunFormatError(f"{path}: a run needs a 'score' or a 'rank' column, got {table.columns}")
        frame = table.select(
            pl.col(q).cast(pl.String).str.strip_chars().alias("qid"),
            pl.col(d).cast(pl.String).str.strip_chars().alias("docid"),
            (pl.col(s).cast(pl.String) if s else pl.lit(None, pl.String)).alias("f_score"),
            (pl.col(r).cast(pl.String) if r else pl.lit(None, pl.String)).alias("f_rank"),
            pl.int_range(2, table.height + 2, dtype=pl.Int64).alias("line"),  # line 1 is the header
        ).with_columns(score=_to_float("f_score"), rank=_to_float("f_rank"))
        bad = (
            (pl.col("qid").fill_null("") == "")
            | (pl.col("docid").fill_null("") == "")
            | (pl.lit(s is not None) & pl.col("score").is_null())
            | (pl.lit(r is not None) & pl.col("rank").is_null())
        )
        message = pl.format(
            "missing or non-numeric value in ('{}', '{}', {}, {})",
            pl.col("qid").fill_null(""),
            pl.col("docid").fill_null(""),
            pl.col("f_score").fill_null("None"),
            pl.col("f_rank").fill_null("None"),
        )
    else:
        keep = {0: "qid", 2: "docid", 3: "rank", 4: "score"}
        frame = _fast_fields(path, 6, keep, floats=(3, 4))
        if frame is not None:  # every line has 6 fields and numbers; only inf/nan can still be wrong
            bad = ~(pl.col("score").is_finite() & pl.col("rank").is_finite())
            message = pl.format(
                "rank '{}' and score '{}' must be finite numbers",
                pl.col("rank").cast(pl.String),
                pl.col("score").cast(pl.String),
            )
        else:
            fields = _split_fields(_read_lines(path), 6)
            frame = fields.select(
                "line",
                "text",
                qid="f0",
                docid="f2",
                f_rank="f3",
                f_score="f4",
                score=_to_float("f4"),
                rank=_to_float("f3"),
            )
            wrong_count = pl.col("qid").is_null()
            bad = wrong_count | pl.col("score").is_null() | pl.col("rank").is_null()
            message = (
                pl.when(wrong_count)
                .then(
                    pl.format(
                        "expected 6 fields 'qid Q0 docid rank score tag', got {}",
                        pl.col("text").str.count_matches(r"\S+"),
                    )
                )
                .otherwise(pl.format("rank '{}' and score '{}' must be finite numbers", "f_rank", "f_score"))
            )
    broken = frame.filter(bad)
    if broken.height:
        issues += _issues(broken, path, message)
        frame = frame.filter(~bad)
    frame = frame.select("qid", "docid", "score", "rank", "line")
    if path.suffix in (".csv", ".tsv", ".parquet") and s is None:
        frame = frame.with_columns(score=-pl.col("rank"))  # rank-only run: rank 1 is the best score
    frame, dups = _drop_duplicates(frame, path, "entry")
    issues += dups
    report_issues(issues, errors, str(path))
    return Run(str(path), frame, issues)


def read_qrels(path: str | Path, errors: str = "raise") -> Qrels:
    """Read TREC qrels, BEIR TSV qrels (header `query-id corpus-id score`) or CSV/Parquet judgements."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing qrels file")
    issues: list[Issue] = []
    with open(path, "rb") as f:
        head = f.readline().decode("utf-8", errors="replace").strip().lower()
    first_token = head.replace(",", " ").split()[0] if head.split() else ""
    if path.suffix == ".tsv":  # BEIR: query-id, corpus-id, score, tab-separated; the header is optional
        lines = _read_lines(path).filter(pl.col("text").is_not_null())
        if first_token in QUERY_COLUMNS:
            lines = lines.filter(pl.col("line") > 1)
        parts = pl.col("text").str.strip_chars_end("\r\n").str.split("\t")
        frame = lines.with_columns(_parts=parts).select(
            "line",
            "text",
            pl.col("_parts").list.len().alias("_n"),
            qid=pl.col("_parts").list.get(0, null_on_oob=True),
            docid=pl.col("_parts").list.get(1, null_on_oob=True),
            grade=_to_float_expr(pl.col("_parts").list.get(2, null_on_oob=True)),
        )
        bad = (pl.col("_n") != 3) | pl.col("grade").is_null()
        message = (
            pl.when(pl.col("_n") != 3)
            .then(pl.lit("expected 3 tab-separated fields (query-id, corpus-id, score)"))
            .otherwise(pl.format("score must be a number, got '{}'", pl.col("text").str.strip_chars()))
        )
    elif path.suffix in (".csv", ".parquet") or first_token in QUERY_COLUMNS:  # a header names its columns
        table = read_table(path)
        q = pick_column(table.columns, QUERY_COLUMNS, str(path), "query")
        d = pick_column(table.columns, DOC_COLUMNS, str(path), "document")
        g = pick_column(table.columns, GRADE_COLUMNS, str(path), "grade", required=False)
        frame = table.select(
            pl.col(q).cast(pl.String).str.strip_chars().alias("qid"),
            pl.col(d).cast(pl.String).str.strip_chars().alias("docid"),
            (pl.col(g).cast(pl.String) if g else pl.lit("1")).alias("f_grade"),
            pl.int_range(2, table.height + 2, dtype=pl.Int64).alias("line"),
        ).with_columns(grade=_to_float("f_grade"))
        bad = (
            (pl.col("qid").fill_null("") == "")
            | (pl.col("docid").fill_null("") == "")
            | pl.col("grade").is_null()
        )
        message = pl.format(
            "missing or non-numeric value in ('{}', '{}', '{}')",
            pl.col("qid").fill_null(""),
            pl.col("docid").fill_null(""),
            pl.col("f_grade").fill_null("None"),
        )
    else:
        frame = _fast_fields(path, 4, {0: "qid", 2: "docid", 3: "grade"}, floats=(3,))
        if frame is not None:
            bad = ~pl.col("grade").is_finite()
            message = pl.format(
                "expected 'qid iter docid rel' with a numeric rel, got '{} {} {}'",
                "qid",
                "docid",
                pl.col("grade").cast(pl.String),
            )
        else:
            fields = _split_fields(_read_lines(path), 4)
            frame = fields.select("line", "text", qid="f0", docid="f2", grade=_to_float("f3"))
            bad = pl.col("qid").is_null() | pl.col("grade").is_null()
            message = pl.format(
                "expected 'qid iter docid rel' with a numeric rel, got '{}'", pl.col("text").str.strip_chars()
            )
    broken = frame.filter(bad)
    if broken.height:
        issues += _issues(broken, path, message)
        frame = frame.filter(~bad)
    frame, dups = _drop_duplicates(frame.select("qid", "docid", "grade", "line"), path, "judgement")
    issues += dups
    report_issues(issues, errors, str(path))
    return Qrels(str(path), frame, issues)
