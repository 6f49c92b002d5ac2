"""ML-1M two-stage with a learned second stage against its best single stage, into retrieval.json.

    python benchmarks/bench_learned_rerank.py --data-dir DIR --first-stage RUN [--models RUN ...] \
        [--out runs/learned-rerank-ml1m] [--set key=value ...]

Runs `seqbert train recipes/learned_rerank_ml1m.yaml` (one fresh call: the output directory is removed
first) on the given recommend runs, then merges its headline into benchmarks/results/retrieval.json:

    "ml1m_two_stage_best": {"ndcg@10", "hr@10", "best_single_ndcg@10", "p_value", "cost_ratio", "pipeline",
                            "command", "variants": {variant: {ndcg@10, delta_ci95, p_value, p_holm}}, ...}

`cost_ratio` is the pipeline's batched seconds (first stage top-K, then the reranker with the other models'
candidate scores and the features) over the first stage's own full ranking, same users, same process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("SEQBERT_DATA_DIR"))
    ap.add_argument("--first-stage", required=True, help="recommend run that retrieves (e.g. SASRec+)")
    ap.add_argument("--models", nargs="*", default=[], help="more recommend runs whose scores are features")
    ap.add_argument("--out", default=str(ROOT / "runs" / "learned-rerank-ml1m"))
    ap.add_argument("--set", action="append", default=[], help="job override key=value (repeatable)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "retrieval.json"))
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("--data-dir or SEQBERT_DATA_DIR is required")
    shutil.rmtree(args.out, ignore_errors=True)  # one fresh call
    argv = [
        "seqbert", "train", "recipes/learned_rerank_ml1m.yaml", "--out", args.out, "--data-dir", args.data_dir,
        "--set", f"data.first_stage={args.first_stage}", "--set", f"data.models=[{','.join(args.models)}]",
        "--set", "progress=false", *[x for s in args.set for x in ("--set", s)],
    ]  # fmt: skip
    print("$ " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "seqbert", *argv[1:]], check=True, cwd=ROOT)
    summary = json.loads((Path(args.out) / "metrics.json").read_text())
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    results["ml1m_two_stage_best"] = {
        "ndcg@10": summary["ndcg@10"],
        "hr@10": summary["hr@10"],
        "best_single_ndcg@10": summary["best_single_ndcg@10"],
        "best_single": summary["best_single"],
        "p_value": summary["p_value"],
        "cost_ratio": summary["cost_ratio"],
        "pipeline": f"{summary['features']['models'][0]} top-{summary['config']['depth']} -> learned "
        f"reranker ({summary['best_pipeline']})",
        "command": " ".join(argv),
        "single_stages": summary["single_stages"],
        "recall@depth": summary["recall@depth"],
        "variants": {
            v: {k: p[k] for k in ("ndcg@10", "hr@10", "delta_ci95", "p_value", "p_holm", "holdout_ndcg@10")}
            for v, p in summary["pipelines"].items()
        },
        "threads": summary["threads"],
    }
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ml1m_two_stage_best"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
