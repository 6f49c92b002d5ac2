"""Time to quality: BERT4Rec and SASRec+ on ML-1M for fixed training budgets, one fresh call each.

    python benchmarks/bench_time_to_quality.py --data-dir DIR [--models sasrec,bert4rec] \
        [--budgets 600,1800] [--precisions fp32,auto] [--threads 2] [--set key=value ...] [--results F]

Each (precision, model, budget) is one fresh `seqbert train` process (the run directory is removed first),
with the recipe's time-clocked schedule over `train.max_seconds` = the budget, on `--threads` intra-op
threads. `precision: fp32` is the case of every CPU without native bf16 (most laptops, AMD Zen 2/3, Intel
before Sapphire Rapids); `auto` picks bf16 where the CPU has it. Reads each run's metrics.json and writes
benchmarks/results/time_to_quality.json (merged: runs not repeated keep their figures):

    {"fp32": {"sasrec": {"ndcg10_at_600s", "hr10_at_600s", "ndcg10_at_1800s", "hr10_at_1800s",
                         "seconds_to_0.1537", "peak_rss_mb", "eval_seconds_full",
                         "peak_rss_mb_at_<budget>s", ...}, "bert4rec": {...}},
     "auto": {...}, "machine": "...", "commands": {...}}

seconds_to_0.1537 is the wall-clock seconds (evaluations included) of the first curve point with test
full NDCG@10 >= 0.1537 (Klenitskiy & Vasilev's BERT4Rec figure), from the longest budget run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"sasrec": "recipes/sasrec_ml1m.yaml", "bert4rec": "recipes/bert4rec_ml1m_short.yaml"}
TARGET = 0.1537


def machine() -> str:
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line), "?")
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return f"{model}, {os.cpu_count()} cores, native bf16: {bf16}, torch {torch.__version__}, {platform.platform()}"


def run_one(
    model: str, budget: int, precision: str, threads: int, data_dir: str, runs: Path, sets: list[str]
) -> tuple[dict, str]:
    out = runs / f"{precision}-{model}-{budget}"
    shutil.rmtree(out, ignore_errors=True)  # one fresh call, never a resume
    argv = [
        "seqbert", "train", RECIPES[model], "--out", str(out), "--data-dir", data_dir,
        "--set", f"train.max_seconds={budget}", "--set", f"train.precision={precision}",
        "--set", "train.progress=false", *[x for item in sets for x in ("--set", item)],
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = f"OMP_NUM_THREADS={threads} " + " ".join(argv)
    print(f"$ {command}", flush=True)
    # `python -m seqbert` is the `seqbert` command itself (re-executed under mimalloc: seqbert.malloc)
    subprocess.run([sys.executable, "-m", "seqbert", *argv[1:]], check=True, env=env, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text()), command


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("SEQBERT_DATA_DIR"))
    ap.add_argument("--models", default="sasrec,bert4rec")
    ap.add_argument("--budgets", default="600,1800")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--set", action="append", default=[], help="recipe override key=value (a lever to measure)"
    )
    ap.add_argument("--runs", default=str(ROOT / "runs" / "time_to_quality"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "time_to_quality.json"))
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("--data-dir or SEQBERT_DATA_DIR is required")
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = machine()
    commands = results.setdefault("commands", {})
    for precision in args.precisions.split(","):
        for model in args.models.split(","):
            entry = results.setdefault(precision, {}).setdefault(model, {})
            for budget in sorted(int(b) for b in args.budgets.split(",")):
                summary, command = run_one(
                    model, budget, precision, args.threads, args.data_dir, Path(args.runs), args.set
                )
                full = summary["full"]
                entry[f"ndcg10_at_{budget}s"] = full["ndcg@10"]
                entry[f"hr10_at_{budget}s"] = full["hr@10"]
                entry[f"mostpop_ndcg10_at_{budget}s"] = summary["mostpop"]["full"]["ndcg@10"]
                entry[f"train_steps_at_{budget}s"] = summary["train_steps"]
                reached = [p["seconds"] for p in summary["curve"] if p["test_ndcg@10"] >= TARGET]
                entry[f"seconds_to_{TARGET}"] = reached[0] if reached else None
                entry[f"peak_rss_mb_at_{budget}s"] = summary["peak_rss_mb"]
                if budget == 600:  # the memory and evaluation targets are for the ten-minute run
                    entry["peak_rss_mb"] = summary["peak_rss_mb"]
                    entry["eval_seconds_full"] = summary["eval_seconds_full"]
                commands[f"{precision}/{model}/{budget}"] = command
                results_path.parent.mkdir(parents=True, exist_ok=True)
                results_path.write_text(
                    json.dumps(results, indent=2) + "\n"
                )  # after every run: partial results survive
                print(json.dumps({f"{precision}/{model}/{budget}": entry}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
