"""`seqbert evaluate`: score run files against qrels and write the report.

    seqbert evaluate --run bm25=bm25.trec --run dense=dense.csv --qrels test.tsv --out report/ \
        --ks 1,5,10,20 --baseline bm25 [--query-groups groups.csv] [--item-popularity counts.csv]
    seqbert evaluate --run sys=run.trec --qrels qrels.txt --out r/ --measures nDCG@10,RR,AP,P@10,R@100 \
        --per-query r/per_query.txt [-c] [--ties trec_eval]

Numbers equal trec_eval's by default (tested against pytrec_eval): ties by docid descending, the rank
column ignored, qrels queries absent from the run left out of the mean (`-c` counts them as 0), relevant
= grade >= 1 (see `seqbert.evaluation.runs`). metrics.json and the report name the tie rule and the mean.
--per-query writes every query's measures under trec_eval names: `.json` {qid: {measure: value}},
`.txt` the lines of `trec_eval -q` (measure, qid, value; then `all` means).

--query-groups: a CSV/TSV with a query column and a `group` column (e.g. history-length bucket); one bar
chart per report. --item-popularity: a CSV/TSV with a document column and a `count` column (training
interactions); adds average recommendation popularity (arp@K) and catalogue coverage@K (catalogue = the
documents listed) at the largest K, and bars by the popularity tercile of each query's relevant documents.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seqbert.evaluation.metrics import coverage, parse_measure, popularity_bias, trec_name
from seqbert.evaluation.report import RunResult, write_report
from seqbert.evaluation.runs import (
    DOC_COLUMNS,
    QUERY_COLUMNS,
    TIE_RULES,
    Aligned,
    align,
    evaluate_aligned,
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
    p.add_argument(
        "--ks",
        help="comma-separated cut-offs; every measure family at each (default 1,5,10,20)",
    )
    p.add_argument(
        "--measures",
        help="comma-separated measures instead of --ks: ir_measures (nDCG@10, RR, AP, AP@100, P@10, R@100, "
        "Success@1), trec_eval (ndcg_cut_10, recip_rank, map, P_10, recall_100, success_1) or seqbert names",
    )
    p.add_argument(
        "--ties",
        choices=TIE_RULES,
        default="trec_eval",
        help="order inside a score tie: docid descending (trec_eval, default), the file's rank, or "
        "relevant first/last (optimistic/pessimistic bounds)",
    )
    p.add_argument(
        "-c",
        "--complete",
        action="store_true",
        help="count qrels queries absent from the run as 0 (trec_eval -c); default: leave them out",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="error when a qrels query has no line in the run, or a run query is not in the qrels",
    )
    p.add_argument(
        "--per-query",
        metavar="PATH",
        help="per-query measures with trec_eval names: .json {qid: {measure: value}} or .txt (trec_eval -q "
        "lines); with several runs, PATH gets the run name before the suffix",
    )
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


def _parse_measures(text: str) -> list[str]:
    """--measures -> seqbert keys, in the given order, duplicates dropped (one-line error if unknown)."""
    keys: list[str] = []
    for name in text.split(","):
        try:
            key = parse_measure(name)
        except ValueError as err:
            raise ValueError(f"--measures: {err}") from None
        if key not in keys:
            keys.append(key)
    return keys


def _cutoffs(keys: list[str]) -> tuple[int, ...]:
    ks = sorted({int(k.partition("@")[2]) for k in keys if "@" in k})
    return tuple(ks) or (1,)


def write_per_query(path: Path, aligned: Aligned, per_query: dict[str, np.ndarray], keys: list[str]) -> None:
    """trec_eval names per query: .json {qid: {measure: value}}; .txt `trec_eval -q` lines + `all` means."""
    names = {key: trec_name(key) for key in keys}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        table = {q: {names[k]: float(per_query[k][i]) for k in keys} for i, q in enumerate(aligned.qids)}
        path.write_text(json.dumps(table, indent=1))
        return
    lines = [f"{names[k]:<22}\t{q}\t{per_query[k][i]:.4f}" for i, q in enumerate(aligned.qids) for k in keys]
    lines += [f"{names[k]:<22}\tall\t{np.mean(per_query[k]) if len(aligned.qids) else 0.0:.4f}" for k in keys]
    path.write_text("\n".join(lines) + "\n")


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
    if args.measures and args.ks:
        raise ValueError("--measures and --ks: give one of them (--measures names each cut-off)")
    if args.measures:
        keys = _parse_measures(args.measures)
        ks = _cutoffs(keys)
    else:
        ks = _parse_ks(args.ks or "1,5,10,20")
        keys = [f"{m}@{k}" for k in ks for m in ("hr", "recall", "precision", "ndcg", "map")] + ["mrr", "map"]
    if args.depth is not None and args.depth < 1:
        raise ValueError(f"--depth must be >= 1 (omit it to keep whole runs), got {args.depth}")
    if args.per_query and Path(args.per_query).suffix not in (".json", ".txt"):
        raise ValueError(f"--per-query: expected a .json or .txt path, got {args.per_query!r}")
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
    query_sets: dict[str, list[str]] = {}
    for name, file in runs.items():
        aligned = align(
            read_run(file, errors=args.on_error),
            qrels,
            args.depth,
            errors=args.on_error,
            ties=args.ties,
            complete=args.complete,
            strict=args.strict,
            keep=max(ks) if args.item_popularity else 0,
        )
        query_sets[name] = aligned.qids
        first = next(iter(query_sets))
        if aligned.qids != query_sets[first]:
            raise ValueError(
                f"runs {first!r} and {name!r} cover different qrels queries ({len(query_sets[first])} vs "
                f"{len(aligned.qids)}), so they cannot be compared query by query; pass -c/--complete to "
                "count missing queries as 0, or evaluate them separately"
            )
        every = evaluate_aligned(aligned, ks, args.gain == "exponential")
        per_query = {k: every[k] for k in keys}
        if args.per_query:
            target = Path(args.per_query)
            if len(runs) > 1:
                target = target.with_name(f"{target.stem}.{name}{target.suffix}")
            write_per_query(target, aligned, per_query, keys)
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
        metadata = {
            "file": file,
            "queries": len(aligned.qids),
            "ties": aligned.ties,
            "mean": aligned.mean,
            "qrels_queries_missing_from_run": len(aligned.missing),
            "run_queries_not_in_qrels": len(aligned.run_only),
            "depth": args.depth,
        }
        results[name] = RunResult(per_query, extra, metadata)
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
