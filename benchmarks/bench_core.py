"""seqbert vs Hugging Face `BertForMaskedLM`: training and inference throughput and peak memory.

Same machine, same run, same weights (HF initialises, seqbert imports the saved checkpoint), same batches.
Training: each (shape, implementation) runs in its own child process so that peak RSS is its own; the
implementations alternate round by round and the median round is reported, so load drift hits all alike.
Inference: one child process per round holds all three models and alternates them step by step (the
median step time of each is reported), because on a shared CPU the load changes within seconds.

seqbert inference calls `model(batch, compute_loss=False)`: logits at the masked positions, no loss, as
`hf_best` does. `--emulate avx2` runs the children as an AVX2-only CPU (ATen kernels, oneDNN and MKL all
capped) and records the figures under the key `emulated_avx2` of the same results file.

Implementations:
  seqbert   - seqbert BertForPreTraining(nsp=False): MLM logits only at masked positions
  hf        - transformers.BertForMaskedLM(**batch, labels=labels): its default, logits at every position
  hf_best   - the same HF model, logits only at masked positions (hf.bert -> gather -> hf.cls), its best setting

    python benchmarks/bench_core.py [--seconds 12] [--rounds 3] [--out benchmarks/results/core.json]
    python benchmarks/bench_core.py --modes infer --emulate avx2   # -> key "emulated_avx2"
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
import tempfile
import time
from pathlib import Path

SHAPES = {
    # BERT4Rec on MovieLens-1M (Sun et al. 2019): item vocab 3,416 + specials, 20 % of items masked;
    # histories are left-padded to 200 with lengths like ML-1M's (many users have fewer than 200 ratings)
    "bert4rec_ml1m": dict(
        vocab=3420, hidden=64, layers=2, heads=2, ffn=256, length=200, batch=128, mask=0.2, pad=True
    ),
    # a small text BERT: WordPiece vocab, packed full-length sequences
    "text_small": dict(
        vocab=30522, hidden=256, layers=4, heads=4, ffn=1024, length=128, batch=32, mask=0.15, pad=False
    ),
}
IMPLS = ("seqbert", "hf", "hf_best")
# environment of an AVX2-only CPU: ATen's kernels, oneDNN's and MKL's code paths each have their own cap
EMULATE = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def make_batches(shape: dict, n: int, seed: int = 0) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    B, L, V = shape["batch"], shape["length"], shape["vocab"]
    out = []
    for _ in range(n):
        ids = torch.randint(5, V, (B, L), generator=g)
        if shape["pad"]:
            # ML-1M history lengths: min 20, median ~96, capped at 200 -> left padding
            lengths = torch.clamp((torch.rand(B, generator=g) ** 2 * 400).long() + 20, max=L)
        else:
            lengths = torch.full((B,), L)
        real = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # (B, L)
        chosen = (torch.rand(B, L, generator=g) < shape["mask"]) & real
        chosen[torch.arange(B), L - 1] = True  # at least one masked position per sequence
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = torch.where(chosen, torch.full_like(ids, 4), ids).masked_fill(~real, 0)
        out.append({"input_ids": inputs, "attention_mask": real.long(), "labels": labels})
    return out


def build(impl: str, ckpt: str, device: str):
    """(model, loss_fn(batch), infer(batch)) of one implementation, weights from the HF checkpoint `ckpt`."""
    import torch.nn.functional as F
    import transformers

    from seqbert.model import BertForPreTraining, load_hf_model
    from seqbert.model.hf import config_from_hf

    if impl == "seqbert":
        config = config_from_hf(json.loads((Path(ckpt) / "config.json").read_text()))
        model, _ = load_hf_model(ckpt, BertForPreTraining(config, nsp=False))

        def loss_fn(b):
            return model(b).loss

        def infer(b):
            return model(b, compute_loss=False).mlm_logits
    else:
        model = transformers.BertForMaskedLM.from_pretrained(ckpt)

        def loss_fn(b):
            if impl == "hf":
                return model(**b).loss
            hidden = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            where = b["labels"] != -100
            return F.cross_entropy(model.cls(hidden[where]), b["labels"][where])

        def infer(b):
            if impl == "hf":
                return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            hidden = model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            return model.cls(hidden[b["labels"] != -100])

    return model.to(device), loss_fn, infer


def child(impl: str, shape_name: str, ckpt: str, seconds: float, mode: str, device: str = "cpu") -> dict:
    """Training throughput and peak RSS of one implementation (`mode` "train"), or inference of all three
    alternating step by step in this one process (`impl` "all", `mode` "infer")."""
    import torch

    torch.manual_seed(0)
    shape = SHAPES[shape_name]
    batches = [{k: v.to(device) for k, v in b.items()} for b in make_batches(shape, 4)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if mode == "infer":
        infers = {}
        for name in IMPLS:
            model, _, infers[name] = build(name, ckpt, device)
            model.eval()
        times: dict[str, list[float]] = {name: [] for name in IMPLS}
        with torch.inference_mode():
            for name in IMPLS:  # warm-up
                infers[name](batches[0])
            sync()
            i, t_end = 0, time.perf_counter() + seconds * len(IMPLS)
            while time.perf_counter() < t_end or i < 2:
                for name in IMPLS:
                    t0 = time.perf_counter()
                    infers[name](batches[i % len(batches)])
                    sync()
                    times[name].append(time.perf_counter() - t0)
                i += 1
        return {
            name: {"sequences_per_s": shape["batch"] / statistics.median(t), "steps": len(t)}
            for name, t in times.items()
        }

    model, loss_fn, _ = build(impl, ckpt, device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4
    )

    def step(b):
        loss = loss_fn(b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for b in batches[:2]:  # warm-up
        step(b)
    sync()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(batches[steps % len(batches)])
        steps += 1
        if steps % 4 == 0:
            sync()
    sync()
    elapsed = time.perf_counter() - t0
    tokens = shape["batch"] * shape["length"]
    return {
        "steps_per_s": steps / elapsed,
        "tokens_per_s": steps * tokens / elapsed,
        "sequences_per_s": steps * shape["batch"] / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        "steps": steps,
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0, help="timed seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--modes", default="train,infer", help="train, infer or both")
    ap.add_argument("--emulate", choices=sorted(EMULATE), help="run the children as this CPU kind")
    ap.add_argument("--out", default="benchmarks/results/core.json")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "SHAPE", "CKPT", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, shape, ckpt, mode = args.child
        print(json.dumps(child(impl, shape, ckpt, args.seconds, mode, args.device)))
        return

    import torch
    import transformers

    from seqbert.training.checkpoint import merge_json
    from seqbert.training.precision import resolve_precision

    modes = args.modes.split(",")
    if not set(modes) <= {"train", "infer"}:
        raise SystemExit(f"--modes must name train and/or infer, got {args.modes!r}")
    env = {**os.environ, **EMULATE.get(args.emulate, {})}
    results: dict = {
        "machine": machine(),
        "device": args.device,
        # the bench runs without autocast; `auto` is what a recipe's `precision: auto` resolves to here
        "precision": "fp32",
        "precision_auto_resolves_to": resolve_precision("auto", torch.device(args.device)),
        "emulated_cpu": {k: v for k, v in env.items() if k in EMULATE.get(args.emulate, {})} or None,
        "command": "python " + " ".join(sys.argv),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for shape_name in args.shapes.split(","):
            s = SHAPES[shape_name]
            torch.manual_seed(0)
            hf_config = transformers.BertConfig(
                vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                num_attention_heads=s["heads"], intermediate_size=s["ffn"], max_position_embeddings=512,
            )  # fmt: skip
            ckpt = str(Path(tmp) / shape_name)
            transformers.BertForMaskedLM(hf_config).save_pretrained(ckpt)

            def run_child(impl, mode, ckpt=ckpt, shape_name=shape_name):
                cmd = [sys.executable, __file__, "--seconds", str(args.seconds), "--device", args.device,
                       "--child", impl, shape_name, ckpt, mode]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                return json.loads(out.stdout.strip().splitlines()[-1])

            runs: dict = {(i, m): [] for i in IMPLS for m in modes}
            for r in range(args.rounds):
                if "train" in modes:
                    for impl in IMPLS:
                        res = run_child(impl, "train")
                        runs[(impl, "train")].append(res)
                        print(f"[{shape_name} round {r + 1}] train {impl:8s} {res['tokens_per_s']:10.0f} tok/s  "
                              f"{res['steps_per_s']:.3f} steps/s  peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
                if "infer" in modes:
                    res = run_child("all", "infer")
                    for impl in IMPLS:
                        runs[(impl, "infer")].append(res[impl])
                        print(f"[{shape_name} round {r + 1}] infer {impl:8s} {res[impl]['sequences_per_s']:10.1f} seq/s  "
                              f"({res[impl]['steps']} steps, interleaved)", flush=True)  # fmt: skip

            def med(impl, mode, key, runs=runs):
                return statistics.median(x[key] for x in runs[(impl, mode)])

            entry: dict = {"shape": s, **{f"{mode}_command": results["command"] for mode in modes}}
            for impl in IMPLS:
                entry[impl] = {}
                if "train" in modes:
                    entry[impl]["train_steps_per_s"] = med(impl, "train", "steps_per_s")
                    entry[impl]["train_tokens_per_s"] = med(impl, "train", "tokens_per_s")
                    entry[impl]["train_peak_rss_mb"] = med(impl, "train", "peak_rss_mb")
                if "infer" in modes:
                    entry[impl]["infer_sequences_per_s"] = med(impl, "infer", "sequences_per_s")
            ours, hf, best = entry["seqbert"], entry["hf"], entry["hf_best"]
            summary = f"== {shape_name}:"
            if "train" in modes:
                entry["train_speedup_vs_hf"] = ours["train_tokens_per_s"] / hf["train_tokens_per_s"]
                entry["train_speedup_vs_hf_best"] = ours["train_tokens_per_s"] / best["train_tokens_per_s"]
                entry["peak_rss_ratio_vs_hf"] = ours["train_peak_rss_mb"] / hf["train_peak_rss_mb"]
                entry["peak_rss_ratio_vs_hf_best"] = ours["train_peak_rss_mb"] / best["train_peak_rss_mb"]
                summary += (f" train x{entry['train_speedup_vs_hf']:.2f} vs HF default, "
                            f"x{entry['train_speedup_vs_hf_best']:.2f} vs HF best; peak RSS ratio "
                            f"{entry['peak_rss_ratio_vs_hf']:.2f} / {entry['peak_rss_ratio_vs_hf_best']:.2f};")  # fmt: skip
            if "infer" in modes:
                entry["infer_speedup_vs_hf"] = ours["infer_sequences_per_s"] / hf["infer_sequences_per_s"]
                entry["infer_speedup_vs_hf_best"] = (
                    ours["infer_sequences_per_s"] / best["infer_sequences_per_s"]
                )
                # every round's ratio, so the spread on a shared CPU is on record beside the median
                entry["infer_speedup_vs_hf_best_rounds"] = [
                    o["sequences_per_s"] / b["sequences_per_s"]
                    for o, b in zip(runs[("seqbert", "infer")], runs[("hf_best", "infer")])
                ]
                summary += (f" inference x{entry['infer_speedup_vs_hf']:.2f} vs HF default, "
                            f"x{entry['infer_speedup_vs_hf_best']:.2f} vs HF best")  # fmt: skip
            results[shape_name] = entry
            print(summary, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.emulate:
        merge_json(args.out, f"emulated_{args.emulate}", results)
    else:
        old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        for key, value in results.items():
            if isinstance(value, dict) and isinstance(old.get(key), dict):
                value = {**old[key], **value}  # a run of one mode keeps the other mode's figures
            merge_json(args.out, key, value)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
