"""Full-ranking evaluation time of a trained recommender: the query path (`Bert.encode_last`: the last layer
runs only the query column after its keys and values) against encoding every column, in one process.

    python benchmarks/bench_full_ranking.py RUN_DIR [RUN_DIR ...] [--threads 2] [--rounds 3] [--batch-size 64]

RUN_DIR is a `seqbert train` output (its model and prepared data). Every user's whole history but the last
item is scored against the catalogue in length-sorted batches (as `evaluate_ranking(sort_by_length=True)`
hands them out), with the two paths alternating for `--rounds` rounds; prints one JSON line per run with the
best time of each path, their ratio, and the largest score difference (the paths must agree to rounding).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from seqbert.recommender import Recommender
from seqbert.tasks.bert4rec import score_histories, shared_left_padding


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        rec = Recommender.load(run)
        model = rec.model.eval()
        histories = [h[:-1] for h in rec.histories.values() if len(h) > 1]
        order = np.argsort([len(h) for h in histories], kind="stable")
        batches = [
            [histories[u] for u in order[s : s + args.batch_size]]
            for s in range(0, len(order), args.batch_size)
        ]
        fast = model.query_hidden

        def every_column(inputs: dict[str, torch.Tensor], model=model) -> torch.Tensor:  # noqa: ANN001
            ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, L)
            first = shared_left_padding(mask)
            return model.bert(ids[:, first:], mask[:, first:], position_offset=first)[:, -1]  # (B, H)

        seconds: dict[str, list[float]] = {"every_column": [], "query_column": []}
        max_diff = 0.0
        for _ in range(args.rounds):
            for name, path in (("every_column", every_column), ("query_column", fast)):
                model.query_hidden = path
                start = time.perf_counter()
                with torch.no_grad():
                    scores = [score_histories(model, batch) for batch in batches]  # each (B, V)
                seconds[name].append(time.perf_counter() - start)
                if name == "every_column":
                    reference = scores
                else:
                    for a, b in zip(reference, scores):
                        finite = torch.isfinite(a)
                        max_diff = max(max_diff, float((a[finite] - b[finite]).abs().max()))
        best = {name: min(values) for name, values in seconds.items()}
        print(json.dumps({
            "run": run, "users": len(histories), "threads": args.threads, "batch_size": args.batch_size,
            "every_column_s": round(best["every_column"], 3), "query_column_s": round(best["query_column"], 3),
            "speedup": round(best["every_column"] / best["query_column"], 2), "max_abs_score_diff": max_diff,
        }))  # fmt: skip


if __name__ == "__main__":
    main()
