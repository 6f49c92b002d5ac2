"""The short Python surface for recommenders, and `seqbert recommend`."""

from __future__ import annotations

import argparse
import json
import sys


def add_recommend_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recommend", help="top-k next items for an item history, from a trained run")
    p.add_argument("run_dir", help="a run directory written by `seqbert train` (or its model/ folder)")
    p.add_argument("--items", nargs="+", required=True, help="the history, oldest first (external item ids)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="allow items of the history in the results")
    p.add_argument("--skip-unknown", action="store_true", help="drop history items the model has never seen")
    p.set_defaults(func=run_recommend)


def run_recommend(args: argparse.Namespace) -> int:
    from seqbert.tasks.bert4rec import load_recommender, recommend

    model, vocab = load_recommender(args.run_dir)
    recs = recommend(
        model, vocab, args.items, args.k, exclude_seen=not args.include_seen, skip_unknown=args.skip_unknown
    )
    for rank, (item, score) in enumerate(recs, 1):
        sys.stdout.write(json.dumps({"rank": rank, "item": item, "score": round(score, 6)}) + "\n")
    return 0
