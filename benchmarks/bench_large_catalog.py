"""Training and full ranking on a synthetic 1 M-item catalogue: peak RSS and step time per loss.

    python benchmarks/bench_large_catalog.py [--items 1000000] [--small-items 54542] [--rounds 2]
    python benchmarks/bench_large_catalog.py --only eval   # the ranking alone, merged into the JSON

SASRec+ (next_item, every position labelled) on a synthetic catalogue: hidden 64, 2 layers, 2 heads,
length 200, batch 128 (25,600 labelled positions per step), Zipf(1.0) item popularity, AdamW
(seqbert.training.optim) step included. Every configuration runs in its OWN subprocess, so its peak RSS
(getrusage ru_maxrss) is its own:
  full_ce          full softmax over the catalogue; at 1 M items one step at batch 128 needs
                   (25,600 x 1 M) float32 logits = 102 GB per tensor, so it runs at --full-ce-batch rows
                   (default 1: 200 positions) and the batch-128 cost is extrapolated, marked as such
  sampled_softmax  K negatives per sequence (mixed: half popularity, half uniform) with logQ correction
  gbce             K uniform negatives per sequence, t = 0.75
  eval             seqbert.tasks.catalogue.topk_histories: top-10 over the catalogue for 1,000 users
                   (histories of 50 items, seen items excluded), chunked (never a 1,000 x 1 M matrix),
                   against its floor in the same run: the same products without any selection
The sampled losses also run at --small-items (Beauty's 54,542) for the "<= 2x the step time" target;
rounds alternate 1 M and 54 k so load drift on the shared CPU hits both; medians are reported.
Writes benchmarks/results/large_catalog.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, LAYERS, HEADS, LENGTH, BATCH, NEGATIVES = 64, 2, 2, 200, 128, 256
EVAL_CHUNK = 2048  # topk_over_catalogue's default


def child(spec: dict) -> dict:
    """One configuration in this process: build, warm up, time; returns its figures."""
    import numpy as np
    import torch

    from seqbert.data.vocab import FIRST_ITEM_ID
    from seqbert.model.bert import BertConfig
    from seqbert.tasks.bert4rec import RecConfig, SeqRecommender, make_collate, query_states
    from seqbert.tasks.catalogue import count_items, topk_histories
    from seqbert.training.optim import configure_optimizer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    items, V = spec["items"], spec["items"] + FIRST_ITEM_ID
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, items + 1)  # Zipf(1.0)
    popularity /= popularity.sum()

    def draw(shape) -> np.ndarray:
        return rng.choice(items, size=shape, p=popularity) + FIRST_ITEM_ID

    loss = {"full_ce": "ce", "eval": "ce"}.get(spec["loss"], spec["loss"])
    negatives = "mixed" if loss == "sampled_softmax" else "uniform"
    task = RecConfig(
        objective="next_item", max_len=LENGTH, loss=loss, num_negatives=NEGATIVES, negatives=negatives,
        negatives_per="sequence",  # the default: each sequence draws its own K
    )  # fmt: skip
    bert = BertConfig(
        vocab_size=V, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, intermediate_size=4 * HIDDEN,
        max_len=LENGTH, type_vocab_size=0, causal=True, dropout=0.2, attention_dropout=0.2,
    )  # fmt: skip
    model = SeqRecommender(bert, task)
    out = {"items": items, "loss": spec["loss"]}
    if spec["loss"] == "eval":
        histories = list(draw((spec["users"], 50)))
        weight = model.head.decoder.weight[FIRST_ITEM_ID:].detach()  # (N, H)
        bias = model.head.decoder.bias[FIRST_ITEM_ID:].detach()  # (N,)

        @torch.no_grad()
        def products_only() -> None:
            # the floor, the same run's peer: query states and the (users, N) scores in the same chunks,
            # without any selection (every method that ranks the whole catalogue exactly pays this)
            queries = query_states(model.eval(), histories)  # (U, H)
            queries = torch.cat([queries, queries.new_ones(len(queries), 1)], 1)  # (U, H + 1): bias folded in
            block = torch.empty(len(queries), EVAL_CHUNK)
            for start in range(0, items, EVAL_CHUNK):
                w = torch.cat([weight[start : start + EVAL_CHUNK], bias[start : start + EVAL_CHUNK, None]], 1)
                torch.mm(queries, w.T, out=block[:, : len(w)])

        timings, cpu, floor, floor_cpu = [], [], [], []
        for _ in range(spec["repeats"]):  # alternated, so load drift hits both
            t0, c0 = time.perf_counter(), time.process_time()
            scores, ids = topk_histories(
                model, histories, k=10, exclude_seen=True, batch_size=1000, chunk=EVAL_CHUNK
            )
            timings.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            products_only()
            floor.append(time.perf_counter() - t0)
            floor_cpu.append(time.process_time() - c0)
        assert ids.shape == (spec["users"], 10) and (ids >= FIRST_ITEM_ID).all()
        out.update(
            users=spec["users"], seconds=timings, seconds_median=statistics.median(timings),
            cpu_seconds_median=statistics.median(cpu), products_only_seconds=floor,
            products_only_seconds_median=statistics.median(floor),
            products_only_cpu_seconds_median=statistics.median(floor_cpu),
        )  # fmt: skip
    else:
        batch_rows, steps = spec["batch"], spec["steps"]
        windows = torch.from_numpy(draw((batch_rows * (steps + 2), LENGTH + 1)))  # full windows: every label
        collate = make_collate(task, V, item_counts=count_items(list(windows.numpy()), V))
        batches = [
            collate(
                {"items": windows[i * batch_rows : (i + 1) * batch_rows]}, torch.Generator().manual_seed(i)
            )
            for i in range(steps + 2)
        ]
        model.train()
        opt = configure_optimizer(model, lr=1e-3)
        timings, cpu = [], []
        for i, batch in enumerate(batches):
            t0, c0 = time.perf_counter(), time.process_time()
            loss_value = model(batch).loss
            loss_value.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:  # two warm-up steps (allocator, AdamW state creation)
                timings.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        out.update(
            batch=batch_rows, labelled_per_step=batch_rows * LENGTH, step_s=timings,
            step_s_median=statistics.median(timings), cpu_s_median=statistics.median(cpu),
            loss=loss_value.item(),
        )  # fmt: skip
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(spec: dict, timeout: float) -> dict:
    """`spec` in a fresh interpreter; an OOM kill or a timeout is returned as {"error": ...}."""
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_s", "seconds")}), flush=True)
    return result


def eval_entries(evaluation: dict, args: argparse.Namespace) -> dict:
    """The ranking figures of one eval child, per 1,000 users, with their own setting and command."""
    ok = "error" not in evaluation

    def per_1000(key: str) -> float | None:
        return round(evaluation[key] * 1000 / args.users, 3) if ok else None

    return {
        "eval_top10_per_1000_users_s": per_1000("seconds_median"),
        "eval_top10_per_1000_users_cpu_s": per_1000("cpu_seconds_median"),
        "eval_products_only_per_1000_users_s": per_1000("products_only_seconds_median"),
        "eval_products_only_per_1000_users_cpu_s": per_1000("products_only_cpu_seconds_median"),
        "eval_vs_products_only": round(
            evaluation["seconds_median"] / evaluation["products_only_seconds_median"], 3
        )
        if ok
        else None,
        "eval_peak_rss_mb": evaluation.get("peak_rss_mb"),
        "eval_error": evaluation.get("error"),
        "eval_setting": f"topk_histories, {args.users} users, histories of 50, seen excluded, top-10, chunk "
        f"{EVAL_CHUNK}, batch 1000 users; products_only = query states + the chunked (users, items) products "
        "without selection (the floor); medians of 3 alternated repeats",
        "eval_machine": f"{platform.machine()}, {os.cpu_count()} cores shared by several developers, "
        f"{args.threads} torch threads, load average at start {os.getloadavg()[0]:.1f}",
        "eval_command": "python " + " ".join(sys.argv),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--small-items", type=int, default=54_542, help="Beauty's catalogue, the 2x reference")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per subprocess (after 2 warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="subprocesses per sampled configuration")
    ap.add_argument(
        "--full-ce-batch", type=int, default=1, help="rows of 200 positions for full CE at --items"
    )
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default="benchmarks/results/large_catalog.json")
    ap.add_argument(
        "--only", choices=("all", "eval"), default="all",
        help="eval: only the top-10 ranking, merged into the existing --out (other keys kept)",
    )  # fmt: skip
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    base = {"threads": args.threads, "steps": args.steps}
    if args.only == "eval":  # re-measure the ranking only, merged into the existing results
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.exists() else {"items": args.items, "runs": {}}
        if result.get("items") != args.items:
            raise SystemExit(
                f"{out} holds items={result.get('items')}, not --items {args.items}: use another --out"
            )
        evaluation = run_child(
            dict(base, loss="eval", items=args.items, users=args.users, repeats=3), args.timeout
        )
        result |= eval_entries(evaluation, args)
        result.setdefault("runs", {})["eval"] = [evaluation]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(eval_entries(evaluation, args), indent=2))
        print(f"updated the eval entries of {out}")
        return
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for loss in ("sampled_softmax", "gbce"):
            for items in (args.items, args.small_items):
                runs.setdefault(f"{loss}@{items}", []).append(
                    run_child(dict(base, loss=loss, items=items, batch=BATCH), args.timeout)
                )
    full_ce = run_child(dict(base, loss="full_ce", items=args.items, batch=args.full_ce_batch), args.timeout)
    evaluation = run_child(
        dict(base, loss="eval", items=args.items, users=args.users, repeats=3), args.timeout
    )

    def summary(key: str) -> dict:
        ok = [r for r in runs[key] if "error" not in r]
        if not ok:
            return {"peak_rss_mb": None, "step_s": None, "error": runs[key][0]["error"]}
        return {
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in ok), 1),
            "step_s": round(statistics.median([s for r in ok for s in r["step_s"]]), 4),
            "step_cpu_s": round(statistics.median([r["cpu_s_median"] for r in ok]), 4),
            "negatives": NEGATIVES,
        }

    big, small = args.items, args.small_items
    sampled, gbce = summary(f"sampled_softmax@{big}"), summary(f"gbce@{big}")
    sampled["sampler"], gbce["sampler"] = (
        "mixed (half popularity, half uniform), logQ-corrected",
        "uniform, t=0.75",
    )
    if "error" in full_ce:
        full_entry = {
            "peak_rss_mb": None,
            "step_s": None,
            "note": f"failed at batch {args.full_ce_batch}: {full_ce['error']}",
        }
    else:
        per_tensor_gb = BATCH * LENGTH * big * 4 / 1e9
        full_entry = {
            "peak_rss_mb": round(full_ce["peak_rss_mb"], 1),
            "step_s": round(full_ce["step_s_median"], 4),
            "note": (
                f"MEASURED at batch {args.full_ce_batch} ({args.full_ce_batch * LENGTH} labelled positions), not 128: "
                f"at batch {BATCH} ({BATCH * LENGTH} positions) one (M, V) float32 logits tensor alone is "
                f"{per_tensor_gb:.0f} GB (forward keeps logits and log-softmax, backward their gradient), "
                f"so it cannot run in this machine's 24 GB (ESTIMATE, not run); linear extrapolation of the "
                f"measured step time: {full_ce['step_s_median'] * BATCH / args.full_ce_batch:.0f} s per batch-128 step"
            ),
        }
    result = {
        "items": big,
        "full_ce": full_entry,
        "sampled_softmax": sampled,
        "gbce": gbce,
        f"step_s_at_{small}_items": {
            "sampled_softmax": summary(f"sampled_softmax@{small}")["step_s"],
            "gbce": summary(f"gbce@{small}")["step_s"],
        },  # fmt: skip
        f"peak_rss_mb_at_{small}_items": {
            "sampled_softmax": summary(f"sampled_softmax@{small}")["peak_rss_mb"],
            "gbce": summary(f"gbce@{small}")["peak_rss_mb"],
        },  # fmt: skip
        "setting": f"next_item (SASRec+), hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads, length {LENGTH}, "
        f"batch {BATCH} ({BATCH * LENGTH} labelled positions), {NEGATIVES} negatives per sequence, AdamW step included",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch threads, load average at start {os.getloadavg()[0]:.1f}",
        "command": "python " + " ".join(sys.argv),
        "runs": runs | {"full_ce": [full_ce], "eval": [evaluation]},
    } | eval_entries(evaluation, args)
    result[f"step_cpu_s_at_{small}_items"] = {
        loss: summary(f"{loss}@{small}").get("step_cpu_s") for loss in ("sampled_softmax", "gbce")
    }
    for loss in ("sampled_softmax", "gbce"):  # wall-clock and CPU-time ratios, 1 M vs 54 k items
        for field, key in (("step_s", "step_s_at"), ("step_cpu_s", "step_cpu_s_at")):
            here, there = result[loss].get(field), result[f"{key}_{small}_items"][loss]
            if here and there:
                result[loss][f"{field}_ratio_vs_{small}"] = round(here / there, 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
