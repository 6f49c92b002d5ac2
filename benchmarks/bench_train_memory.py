"""Memory and kernel time of SASRec+ training on ML-1M: peak RSS, sys share of CPU time, minor page faults and
CPU seconds per step of the training phase only (the recipe's model, data and task, fp32, no evaluation), and
the loss at the last step. One process per setting (peak RSS is per process); prints one JSON line.

    python benchmarks/bench_train_memory.py --data-dir DIR --out /tmp/mem --steps 10 --path plain|chunked \
        [--budget-mb 16] [--malloc-reuse] [--threads N] [--recipe R.yaml] [--set batch_size=64 ...]

--path plain swaps the chunked full-catalogue loss (`seqbert.tasks.chunked_ce`) for its reference,
`F.cross_entropy` of the masked (M, V) logits (what `SeqRecommender.forward` ran before); both draw the same
batches and dropout masks, so their losses must agree to rounding. --malloc-reuse sets
`TrainConfig.malloc_reuse` (glibc keeps freed blocks in the heap). Compare CPU seconds, not wall time, of
settings run side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import seqbert.tasks.bert4rec as bert4rec
from seqbert.data.vocab import PAD_ID
from seqbert.jobs import load_job_config
from seqbert.jobs.recommend import build_model, load_dataset
from seqbert.tasks.bert4rec import make_collate, training_windows
from seqbert.tasks.chunked_ce import chunked_catalogue_ce
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sasrec_ml1m.yaml"


def plain_catalogue_ce(t, weight, bias, targets, num_special, budget_bytes=0):  # noqa: ANN001, ANN201
    """The pre-chunking loss: F.cross_entropy(SeqRecommender.catalogue_logits(rows), targets)."""
    logits = F.linear(t, weight, bias)  # (M, V), what MLMHead.decoder computes
    logits = logits.masked_fill(torch.arange(len(bias), device=t.device) < num_special, float("-inf"))
    return F.cross_entropy(logits, targets)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--recipe", type=Path, default=RECIPE, help="a recommend recipe (default: SASRec+ ML-1M)"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--path", choices=("plain", "chunked"), default="chunked")
    parser.add_argument("--budget-mb", type=float, default=16.0, help="chunked: MiB of one (C, V) fp32 block")
    parser.add_argument("--malloc-reuse", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = int(args.budget_mb * 2**20)
    if args.path == "plain":
        bert4rec.chunked_catalogue_ce = plain_catalogue_ce
    else:
        bert4rec.chunked_catalogue_ce = lambda *a: chunked_catalogue_ce(*a, budget_bytes=budget)
    _, cfg = load_job_config(args.recipe, args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.data, args.data_dir, args.out)
    torch.manual_seed(0)
    model = build_model(cfg, ds.vocab.size)
    windows = training_windows(ds.train_sequences, cfg.task)  # (N, W)
    source = TensorBatchSource(
        {"items": windows}, cfg.batch_size, seed=0, collate=make_collate(cfg.task, ds.vocab.size),
        lengths=(windows != PAD_ID).sum(1), bucket_batches=cfg.bucket_batches,
    )  # fmt: skip
    config = dataclasses.replace(
        cfg.train, max_steps=args.steps, schedule_clock="steps", warmup_fraction=0.0, warmup_steps=0,
        max_seconds=None, precision="fp32", log_every=args.steps, eval_every=0, early_stopping_metric=None,
        restore_best=False, patience=0, progress=False, keep_last=1, resume=False, malloc_reuse=args.malloc_reuse,
    )  # fmt: skip
    run_dir = args.out / f"train-{time.time_ns()}"
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.time()
    result = train(model, source, config, run_dir)
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    print(json.dumps({
        "path": args.path, "budget_mb": args.budget_mb if args.path == "chunked" else None,
        "malloc_reuse": args.malloc_reuse, "overrides": args.set, "steps": result.step, "threads": torch.get_num_threads(),
        "loss": last["loss"], "grad_norm": last["grad_norm"], "wall_s": round(time.time() - start, 1),
        "user_s": round(user, 1), "sys_s": round(sys_, 1), "sys_share": round(sys_ / (user + sys_), 3),
        "cpu_s_per_step": round((user + sys_) / result.step, 3), "minor_faults": after.ru_minflt - before.ru_minflt,
        "peak_rss_mb": round(after.ru_maxrss / 1024),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
