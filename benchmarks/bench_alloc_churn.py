"""Allocation churn of SASRec+ training on ML-1M: CPU user/sys seconds, minor page faults and peak RSS of the
training phase only (the recipe's model, data and task; no evaluation), with and without
`TrainConfig.malloc_reuse`. One process per setting (peak RSS is per process); prints one JSON line.

    python benchmarks/bench_alloc_churn.py --data-dir DIR --out /tmp/churn --steps 15 [--malloc-reuse]

Compare the two settings by their sys share and CPU seconds per step (CPU time, not wall time, so a busy
shared machine distorts less), run side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import yaml

from seqbert.config import load_config
from seqbert.data.vocab import PAD_ID
from seqbert.jobs.recommend import RecommendJob, load_dataset
from seqbert.model.bert import BertConfig
from seqbert.tasks.bert4rec import SeqRecommender, make_collate, training_windows
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sasrec_ml1m.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--malloc-reuse", action="store_true")
    args = parser.parse_args()
    raw = yaml.safe_load(RECIPE.read_text())
    raw.pop("job")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(RecommendJob, args.out / "recipe.yaml", [])
    ds = load_dataset(cfg.data, args.data_dir, args.out)
    m, vocab_size = cfg.model, ds.vocab.size
    bert = BertConfig(
        vocab_size=vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_len=cfg.task.max_len, type_vocab_size=0, dropout=m.dropout,
        attention_dropout=m.attention_dropout, pad_id=PAD_ID, pre_ln=m.pre_ln, causal=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = SeqRecommender(bert, cfg.task)
    windows = training_windows(ds.train_sequences, cfg.task)  # (N, W)
    source = TensorBatchSource(
        {"items": windows}, cfg.batch_size, seed=0, collate=make_collate(cfg.task, vocab_size),
        lengths=(windows != PAD_ID).sum(1), bucket_batches=cfg.bucket_batches,
    )  # fmt: skip
    t = cfg.train
    config = TrainConfig(
        max_steps=args.steps, lr=t.lr, weight_decay=t.weight_decay, warmup_steps=min(t.warmup_steps, args.steps),
        min_lr_ratio=t.min_lr_ratio, clip_norm=t.clip_norm, precision="fp32", log_every=t.log_every,
        progress=False, keep_last=1, resume=False, malloc_reuse=args.malloc_reuse,
    )  # fmt: skip
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.time()
    result = train(model, source, config, args.out / f"train-{time.time_ns()}")
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(json.dumps({
        "malloc_reuse": args.malloc_reuse, "steps": result.step, "wall_s": round(time.time() - start, 1),
        "user_s": round(user, 1), "sys_s": round(sys_, 1), "sys_share": round(sys_ / (user + sys_), 3),
        "cpu_s_per_step": round((user + sys_) / result.step, 3), "minor_faults": after.ru_minflt - before.ru_minflt,
        "peak_rss_mb": round(after.ru_maxrss / 1024),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
