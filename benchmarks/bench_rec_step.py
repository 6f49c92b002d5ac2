"""BERT4Rec training-step time on real ML-1M windows: seqbert's fast paths vs its reference and vs HF.

    python benchmarks/bench_rec_step.py --data-dir DIR [--steps 30] [--rounds 3] [--threads 2]

The recipe's setting (recipes/bert4rec_ml1m.yaml: hidden 64, 2 layers, 2 heads, length 200, mask 0.2,
dropout 0.2, batch 128) on the real training windows (10,253 windows, mean length 137 of 200), same
cloze batches for every implementation, AdamW step included. Implementations:

  seqbert              SeqRecommender: fast 16-bit dropout masks + bucketed batches, shared padding trimmed
  seqbert_unbucketed   the same model on plainly shuffled batches
  seqbert_reference    fast_dropout=False (torch's F.dropout, SDPA) on plainly shuffled batches: the old path
  hf                   transformers.BertForMaskedLM(**batch, labels=...): its default, logits at every position
  hf_best              HF's encoder -> rows at the masked positions -> its MLM head (the peer's best setting)
  hf_best_bucketed     hf_best on the bucketed batches, shared left padding sliced off (position_ids shifted)

Rounds alternate the implementations so load drift hits all alike; the median round is reported, with
ratios against each peer. Writes benchmarks/results/rec_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("seqbert", "seqbert_unbucketed", "seqbert_reference", "hf", "hf_best", "hf_best_bucketed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="raw data directory (default: $SEQBERT_DATA_DIR)")
    ap.add_argument("--prepared", default="runs/bench-rec-step/data", help="where ML-1M is prepared")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per implementation and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/rec_step.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    from seqbert.data import interactions as inter
    from seqbert.data.cli import prepare
    from seqbert.data.sources import locate, resolve_data_dir
    from seqbert.data.vocab import PAD_ID
    from seqbert.model.bert import BertConfig
    from seqbert.model.heads import IGNORE_INDEX
    from seqbert.tasks.bert4rec import (
        RecConfig,
        SeqRecommender,
        make_collate,
        shared_left_padding,
        training_windows,
    )
    from seqbert.training.data import TensorBatchSource

    prepared = Path(args.prepared)
    if not (prepared / inter.STATS_FILE).exists():
        source = locate("ml-1m", resolve_data_dir(args.data_dir))
        prepare(inter.scan_pairs(source), [source], prepared, name="ml-1m")
    ds = inter.load_prepared(prepared)
    V = ds.vocab.size
    task = RecConfig(objective="cloze", max_len=200, mask_prob=0.2, last_item_prob=0.1, window_stride=100)
    windows = training_windows(ds.train_sequences, task)  # (N, 200)
    lengths = (windows != PAD_ID).sum(1)  # (N,)
    collate = make_collate(task, V)
    n = args.steps * args.rounds + 2
    plain = TensorBatchSource({"items": windows}, 128, seed=0, collate=collate)
    bucketed = TensorBatchSource(
        {"items": windows}, 128, seed=0, collate=collate, lengths=lengths, bucket_batches=32
    )
    batch_sets = {
        "plain": [plain.batch(0, i) for i in range(n)],
        "bucketed": [bucketed.batch(0, i) for i in range(n)],
    }

    def bert_config(fast: bool) -> BertConfig:
        return BertConfig(
            vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256, max_len=200,
            type_vocab_size=0, dropout=0.2, attention_dropout=0.2, pad_id=PAD_ID, fast_dropout=fast,
        )  # fmt: skip

    hf_config = transformers.BertConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
        max_position_embeddings=200, type_vocab_size=1, hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.2, pad_token_id=PAD_ID,
    )  # fmt: skip

    def hf_loss(model, b, gathered: bool, trim: bool):
        ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
        if not gathered:
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss
        first = shared_left_padding(mask) if trim else 0
        L = ids.shape[1]
        pos = torch.arange(first, L)[None, :]
        hidden = model.bert(input_ids=ids[:, first:], attention_mask=mask[:, first:], position_ids=pos)[0]
        where = labels[:, first:] != IGNORE_INDEX
        return F.cross_entropy(model.cls(hidden[where]), labels[:, first:][where])

    setups = {}
    for impl in IMPLS:
        torch.manual_seed(0)
        if impl.startswith("seqbert"):
            model = SeqRecommender(bert_config(impl != "seqbert_reference"), task)

            def loss_fn(b, model=model):
                return model(b).loss
        else:
            model = transformers.BertForMaskedLM(hf_config)

            def loss_fn(b, model=model, impl=impl):
                return hf_loss(model, b, gathered=impl != "hf", trim=impl == "hf_best_bucketed")

        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        batches = batch_sets["bucketed" if impl in ("seqbert", "hf_best_bucketed") else "plain"]
        setups[impl] = (model, opt, loss_fn, batches)

    def run(impl: str, start: int, steps: int) -> float:
        model, opt, loss_fn, batches = setups[impl]
        t0 = time.perf_counter()
        for i in range(start, start + steps):
            loss = loss_fn(batches[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    for impl in IMPLS:  # warm-up
        run(impl, 0, 2)
    per_round: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for r in range(args.rounds):
        for impl in IMPLS:
            per_round[impl].append(run(impl, 2 + r * args.steps, args.steps))
            print(f"round {r}: {impl:20s} {per_round[impl][-1]:.3f} s/step", flush=True)
    sec = {impl: statistics.median(v) for impl, v in per_round.items()}
    result = {
        "command": "python " + " ".join(sys.argv),
        "threads": args.threads,
        "setting": "ML-1M windows, hidden 64, 2 layers, 2 heads, length 200, mask 0.2, dropout 0.2, batch 128",
        "seconds_per_step": sec,
        "seconds_per_step_rounds": per_round,
        "speedup_vs_hf_default": sec["hf"] / sec["seqbert"],
        "speedup_vs_hf_best": sec["hf_best"] / sec["seqbert"],
        "speedup_vs_hf_best_bucketed": sec["hf_best_bucketed"] / sec["seqbert"],
        "speedup_vs_seqbert_reference": sec["seqbert_reference"] / sec["seqbert"],
        "fast_dropout_speedup_unbucketed": sec["seqbert_reference"] / sec["seqbert_unbucketed"],
    }
    for key in [k for k in result if k.startswith(("speedup", "fast_"))]:
        print(f"{key}: {result[key]:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
