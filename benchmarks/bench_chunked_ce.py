"""Full-catalogue cross-entropy of SASRec+ on ML-1M, the plain (M, V) logits vs row chunks
(`seqbert.tasks.chunked_ce`): peak RSS, sys share of CPU time and CPU seconds per step of the training phase
only (the recipe's model, data and task, fp32, no evaluation), and the loss at the last step. One process per
setting (peak RSS is per process); prints one JSON line.

    python benchmarks/bench_chunked_ce.py --data-dir DIR --out /tmp/cce --steps 10 --path plain|chunked

"plain" swaps the chunked loss for its reference, `F.cross_entropy` of the masked (M, V) logits (the code
`SeqRecommender.forward` ran before); both settings draw the same batches and dropout masks, so their
losses must agree to rounding. Compare CPU seconds (not wall time) of settings run side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

import seqbert.tasks.bert4rec as bert4rec
from seqbert.config import load_config
from seqbert.data.vocab import PAD_ID
from seqbert.jobs.recommend import RecommendJob, load_dataset
from seqbert.model.bert import BertConfig
from seqbert.tasks.bert4rec import SeqRecommender, make_collate, training_windows
from seqbert.tasks.chunked_ce import chunked_catalogue_ce
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sasrec_ml1m.yaml"


def plain_catalogue_ce(t, weight, bias, targets, num_special, budget_bytes=0):  # noqa: ANN001, ANN201
    """The pre-chunking loss: F.cross_entropy(SeqRecommender.catalogue_logits(rows), targets)."""
    logits = F.linear(t, weight, bias)  # (M, V), what MLMHead.decoder computes
    logits = logits.masked_fill(torch.arange(len(bias), device=t.device) < num_special, float("-inf"))
    return F.cross_entropy(logits, targets)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--path", choices=("plain", "chunked"), required=True)
    parser.add_argument("--budget-mb", type=float, default=16.0, help="chunked: MiB of one (C, V) fp32 block")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = int(args.budget_mb * 2**20)
    if args.path == "plain":
        bert4rec.chunked_catalogue_ce = plain_catalogue_ce
    else:
        bert4rec.chunked_catalogue_ce = lambda *a: chunked_catalogue_ce(*a, budget_bytes=budget)
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
        min_lr_ratio=t.min_lr_ratio, clip_norm=t.clip_norm, precision="fp32", log_every=args.steps,
        progress=False, keep_last=1, resume=False,
    )  # fmt: skip
    run_dir = args.out / f"train-{time.time_ns()}"
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.time()
    result = train(model, source, config, run_dir)
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    print(json.dumps({
        "path": args.path, "budget_mb": args.budget_mb if args.path == "chunked" else None, "steps": result.step,
        "threads": torch.get_num_threads(),
        "loss": last["loss"], "grad_norm": last["grad_norm"], "wall_s": round(time.time() - start, 1),
        "user_s": round(user, 1), "sys_s": round(sys_, 1), "sys_share": round(sys_ / (user + sys_), 3),
        "cpu_s_per_step": round((user + sys_) / result.step, 3), "minor_faults": after.ru_minflt - before.ru_minflt,
        "peak_rss_mb": round(after.ru_maxrss / 1024),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
