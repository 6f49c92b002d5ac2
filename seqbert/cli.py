"""The `seqbert` command: data preparation, recommendation, two-stage pipelines, evaluation, text predictions.

Training runs through the recipes (`python recipes/bert4rec.py --config ...`), which are scripts, not
framework code; the command serves what they produce.
"""

from __future__ import annotations

import argparse
import json
import sys

from seqbert.data.cli import add_data_parser, run_data
from seqbert.evaluation.cli import add_evaluate_parser, run_evaluate
from seqbert.pipeline import add_pipeline_parser, run_pipeline_cli
from seqbert.training.checkpoint import CheckpointError


def add_recommend_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recommend", help="top-k next items for an item history, from a trained run")
    p.add_argument("run_dir", help="a run directory written by recipes/bert4rec.py (or its model/ folder)")
    p.add_argument("--items", nargs="+", required=True, help="the history, oldest first (external item ids)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="allow items of the history in the results")
    p.add_argument("--skip-unknown", action="store_true", help="drop history items the model has never seen")


def run_recommend(args: argparse.Namespace) -> int:
    from seqbert.tasks.bert4rec import load_recommender, recommend

    model, vocab = load_recommender(args.run_dir)
    recs = recommend(
        model, vocab, args.items, args.k, exclude_seen=not args.include_seen, skip_unknown=args.skip_unknown
    )
    for rank, (item, score) in enumerate(recs, 1):
        sys.stdout.write(json.dumps({"rank": rank, "item": item, "score": round(score, 6)}) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqbert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_parser(sub)
    add_evaluate_parser(sub)
    add_recommend_parser(sub)
    add_pipeline_parser(sub)
    try:
        from seqbert.tasks.text import add_text_parsers
    except ImportError:  # text extras missing: the other commands still work
        add_text_parsers = None
    if add_text_parsers is not None:
        add_text_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data":
            return run_data(args)
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "recommend":
            return run_recommend(args)
        if args.command == "pipeline":
            return run_pipeline_cli(args)
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, CheckpointError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
