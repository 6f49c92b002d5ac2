"""`seqbert evaluate`: score run files against qrels and write the report.

    seqbert evaluate --run bm25=bm25.trec --run dense=dense.csv --qrels test.tsv --out report/ \
        --ks 1,5,10,20 --baseline bm25 [--query-groups groups.csv] [--item-popularity counts.csv]

--query-groups: a CSV/TSV with a query column and a `group` column (e.g. history-length bucket); one bar
chart per report. --item-popularity: a CSV/TSV with a document column and a `count` column (training
interactions); adds average recommendation popularity (arp@K) and catalogue coverage@K (catalogue = the
documents listed) at the largest K, and bars by the popularity tercile of each query's relevant documents.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from seqbert.evaluation.metrics import coverage, evaluate_ranked, popularity_bias
from seqbert.evaluation.report import RunResult, write_report
from seqbert.evaluation.runs import (
    DOC_COLUMNS,
    QUERY_COLUMNS,
    align,
    pick_column,
    read_qrels,
    read_run,
    read_table,
)


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `evaluate` on the `seqbert` command's subparsers."""
    p = subparsers.add_parser(
        "evaluate", help="score run files against qrels; write metrics.json and reports"
    )
    p.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="a run (TREC, CSV or Parquet); repeat",
    )
    p.add_argument("--qrels", required=True, help="TREC qrels, BEIR TSV qrels or CSV/Parquet judgements")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ks", default="1,5,10,20", help="comma-separated cut-offs (default 1,5,10,20)")
    p.add_argument("--baseline", help="run the others are compared with (paired test, Holm-corrected)")
    p.add_argument("--test", choices=("t", "wilcoxon"), default="t", help="paired test (default t)")
    p.add_argument("--depth", type=int, help="truncate every run at this depth (default: keep all)")
    p.add_argument(
        "--gain", choices=("linear", "exponential"), default="linear", help="NDCG gain: g or 2^g - 1"
    )
    p.add_argument("--query-groups", help="CSV/TSV: query column + `group` column")
    p.add_argument("--item-popularity", help="CSV/TSV: document column + `count` column")
    p.add_argument(
        "--on-error",
        choices=("raise", "warn"),
        default="raise",
        help="file problems: stop or report and go on",
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default="Ranking evaluation")
    p.set_defaults(func=run_evaluate)
    return p


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise SystemExit(f"--ks: expected comma-separated positive integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise SystemExit(f"--ks: cut-offs must be >= 1, got {text!r}")
    return ks


def _read_mapping(path: str, value_column: str) -> dict[str, str]:
    frame = read_table(Path(path))
    key = pick_column(frame.columns, QUERY_COLUMNS + DOC_COLUMNS, path, "id")
    if value_column not in frame.columns:
        raise SystemExit(f"{path}: needs a {value_column!r} column, got {frame.columns}")
    return dict(zip(frame[key].cast(str).to_list(), frame[value_column].cast(str).to_list()))


def _popularity_terciles(rel_ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Label each query by the tercile of its relevant documents' mean popularity."""
    valid = rel_ids >= 0
    mean = np.where(valid, counts[np.maximum(rel_ids, 0)], 0).sum(1) / np.maximum(valid.sum(1), 1)
    lo, hi = np.quantile(mean, [1 / 3, 2 / 3])
    names = np.array([f"1 tail (<= {lo:.0f})", f"2 mid (<= {hi:.0f})", f"3 head (> {hi:.0f})"])
    return names[(mean > lo).astype(int) + (mean > hi).astype(int)]


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate every --run against --qrels and write the report to --out; returns the exit code."""
    ks = _parse_ks(args.ks)
    runs: dict[str, str] = {}
    for spec in args.run:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise SystemExit(f"--run: expected NAME=FILE, got {spec!r}")
        if name in runs:
            raise SystemExit(f"--run: the name {name!r} is used twice")
        runs[name] = file
    if args.baseline and args.baseline not in runs:
        raise SystemExit(f"--baseline {args.baseline!r} is not one of the runs {list(runs)}")
    qrels = read_qrels(args.qrels, errors=args.on_error)
    popularity = (
        {k: float(v) for k, v in _read_mapping(args.item_popularity, "count").items()}
        if args.item_popularity
        else None
    )
    results: dict[str, RunResult] = {}
    segments: dict[str, np.ndarray] = {}
    for name, file in runs.items():
        aligned = align(read_run(file, errors=args.on_error), qrels, args.depth, errors=args.on_error)
        per_query = evaluate_ranked(
            aligned.ranked, aligned.rel_ids, aligned.rel_grades, ks, args.gain == "exponential"
        )
        extra: dict[str, float] = {}
        if popularity is not None:
            counts = np.array([popularity.get(d, 0.0) for d in aligned.docs])
            k = max(ks)
            per_query[f"arp@{k}"] = np.nan_to_num(popularity_bias(aligned.ranked, counts, k))
            in_catalogue = np.array([d in popularity for d in aligned.docs] + [False])  # [-1] -> False
            listed = np.where(in_catalogue[aligned.ranked[:, :k]], aligned.ranked[:, :k], -1)
            extra[f"coverage@{k}"] = coverage(listed, len(popularity), k)
            segments.setdefault("relevant-item popularity", _popularity_terciles(aligned.rel_ids, counts))
        if args.query_groups and "query group" not in segments:
            groups = _read_mapping(args.query_groups, "group")
            segments["query group"] = np.array([groups.get(q, "(none)") for q in aligned.qids])
        results[name] = RunResult(per_query, extra, {"file": file, "queries": len(aligned.qids)})
    paths = write_report(
        results,
        args.out,
        baseline=args.baseline,
        segments=segments,
        title=args.title,
        test=args.test,
        n_resamples=args.resamples,
        seed=args.seed,
    )
    for p in paths.values():
        print(p)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m seqbert.evaluation.cli evaluate ...`) until `seqbert` wires it."""
    parser = argparse.ArgumentParser(prog="seqbert")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
