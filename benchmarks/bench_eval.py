"""Benchmark seqbert.evaluation: parity and speed against ranx, full-ranking speed, and scale.

    nice .venv/bin/python benchmarks/bench_eval.py            # ~2-4 minutes on 2 CPU cores

Writes benchmarks/results/evaluation.json:
- parity: max |ours - ranx| over per-query hr/recall/precision/ndcg/map@{1,3,5,10}, mrr, map, ndcg_burges@10
  on randomised cases with tied scores (pessimistic order handed to ranx) and empty relevance, plus the
  speed-comparison input below.
- speed_vs_reference: ranx evaluate() seconds / our evaluate_ranked() seconds on the same run (Q queries x 100
  ranked ids, 1-3 relevant each), both starting from their native in-memory input (ranx Qrels/Run objects,
  our (Q, K) arrays); ranx's dict -> Qrels/Run construction is timed separately.
- full_ranking_ml1m: evaluate_ranking over 6,040 users x 3,416 items with precomputed scores (the model's
  compute excluded), median of 3.
- scale: 1 M users x 100 k items, random top-100 lists per user streamed in chunks through evaluate_ranked,
  run in a child process so its peak RSS (getrusage) is its own. full_ranking_scale: evaluate_ranking on
  20 k users x 100 k items with random scores made inside score_fn (that time is subtracted).
- trec_eval_parity: per-query max |seqbert - trec_eval| (pytrec_eval) over every exposed measure at cut-offs
  1..100 on three random run/qrels sets of 2,200 query ids with ties, contradicting rank columns,
  shuffled or score-ordered lines, qrels-only / run-only queries and grades 0-3, under both means.
- scale_10m: `seqbert evaluate` on a 10 M-line TREC run (10,000 queries x 1,000 documents, written in
  score order per query as systems do, scores to 3 decimals so ties are common) in a child process;
  scale_10m_unordered: the same with each query's lines in random order (a full sort):
  wall and CPU seconds and peak RSS from os.wait4; read_floor_seconds is a bare polars read_csv of the
  same file in its own child, the I/O floor any evaluator pays (ratio = seconds / read floor).

    nice .venv/bin/python benchmarks/bench_eval.py --only trec   # just the two above (~2-5 minutes)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from seqbert.evaluation.metrics import (
    evaluate_ranked,
    order_by_score,
    relevance_gains,
    single_target_metrics,
)
from seqbert.evaluation.ranking import evaluate_ranking

KS = (1, 5, 10, 20)
RANX_NAMES = [f"{m}@{k}" for m in ("hit_rate", "recall", "precision", "ndcg", "map") for k in KS] + [
    "mrr",
    "map",
]


def _lists(rng: np.random.Generator, q: int, items: int, depth: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ranked ids per row ((base + j * step) mod items, step coprime with items) and 1-3 targets."""
    base = rng.integers(0, items, size=(q, 1))
    step = rng.choice(np.array([s for s in range(1, 2000) if np.gcd(s, items) == 1]), size=(q, 1))
    ranked = (base + np.arange(depth) * step) % items  # (Q, depth), distinct while depth < items / gcd
    rel = rng.integers(0, items, size=(q, 3))
    hit = rng.random((q, 3)) < 0.3  # ~30% of targets are placed somewhere in the list
    rel = np.where(hit, np.take_along_axis(ranked, rng.integers(0, depth, size=(q, 3)), axis=1), rel)
    rel[:, 1:] = np.where(rng.random((q, 2)) < 0.5, -1, rel[:, 1:])  # 1-3 relevant per query
    dup = rel[:, 1:] == rel[:, :1]  # (Q, 2): a repeat of the first target
    dup[:, 1] |= rel[:, 2] == rel[:, 1]
    rel[:, 1:] = np.where(dup, -1, rel[:, 1:])
    return ranked, rel


def parity_random_cases(num_cases: int = 2000) -> float:
    """Max |ours - ranx| on random cases with ties and empty relevance (as in tests/evaluation)."""
    import ranx

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(num_cases):
        n = int(rng.integers(1, 31))
        judged = rng.permutation(100)[: int(rng.integers(1, 12))]
        grades = rng.integers(0, 4, size=len(judged)).astype(float) * (rng.random() >= 0.1)
        cases.append((rng.permutation(100)[:n], rng.integers(0, 6, size=n).astype(float), judged, grades))

    def pad(rows, fill):
        width = max(len(r) for r in rows)
        return np.stack([np.concatenate([r, np.full(width - len(r), fill)]) for r in rows])

    ids, scores = pad([c[0] for c in cases], -1), pad([c[1] for c in cases], -np.inf)
    rel_ids, grades = pad([c[2] for c in cases], -1), pad([c[3] for c in cases], 0.0)
    gains = relevance_gains(ids, rel_ids, grades)
    ranked = np.take_along_axis(ids, order_by_score(ids, scores, gains), axis=1)
    ours = evaluate_ranked(ranked, rel_ids, grades, KS)
    ours["ndcg_burges@10"] = evaluate_ranked(ranked, rel_ids, grades, (10,), exponential=True)["ndcg@10"]
    qrels = {f"q{i:05d}": {f"d{d}": int(g) for d, g in zip(c[2], c[3])} for i, c in enumerate(cases)}
    run = {
        f"q{i:05d}": {f"d{d}": float(s - 1e-3 * g) for d, s, g in zip(c[0], c[1], gains[i])}
        for i, c in enumerate(cases)
    }
    ref = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), RANX_NAMES + ["ndcg_burges@10"], return_mean=False)
    return max(
        float(np.abs(ours[n.replace("hit_rate", "hr")] - ref[n]).max())
        for n in RANX_NAMES + ["ndcg_burges@10"]
    )


def speed_vs_ranx(num_queries: int = 20000) -> dict:
    import ranx

    rng = np.random.default_rng(1)
    ranked, rel = _lists(rng, num_queries, 100_000)
    t = _clock()
    ours = evaluate_ranked(ranked, rel, ks=KS)
    ours_s, ours_cpu = _clock() - t
    t = time.perf_counter()
    qrels = ranx.Qrels({f"q{i:06d}": {f"d{d}": 1 for d in r if d >= 0} for i, r in enumerate(rel)})
    run = ranx.Run(
        {f"q{i:06d}": {f"d{d}": float(100 - j) for j, d in enumerate(row)} for i, row in enumerate(ranked)}
    )
    build_s = time.perf_counter() - t
    ranx.evaluate(qrels, run, RANX_NAMES[:2])  # warm the numba JIT cache outside the timing
    t = _clock()
    ref = ranx.evaluate(qrels, run, RANX_NAMES, return_mean=False)
    ranx_s, ranx_cpu = _clock() - t
    diff = max(float(np.abs(ours[n.replace("hit_rate", "hr")] - ref[n]).max()) for n in RANX_NAMES)
    return {
        "queries": num_queries,
        "depth": 100,
        "metrics": len(RANX_NAMES),
        "ours_seconds": ours_s,
        "ours_cpu_seconds": ours_cpu,
        "ranx_cpu_seconds": ranx_cpu,
        "ranx_seconds": ranx_s,
        "ranx_build_seconds": build_s,
        "max_abs_diff": diff,
    }


def full_ranking_ml1m() -> dict:
    users, items = 6040, 3416
    rng = np.random.default_rng(2)
    scores = torch.randn(users, items, generator=torch.Generator().manual_seed(0))
    histories = [
        rng.choice(np.arange(1, items), size=int(rng.integers(20, 300)), replace=False) for _ in range(users)
    ]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, items), h)) for h in histories])
    times = []
    for _ in range(3):
        state = {"next": 0}

        def score_fn(hist, state=state):
            start = state["next"]
            state["next"] += len(hist)
            return scores[start : start + len(hist)]

        t = _clock()
        res = evaluate_ranking(score_fn, histories, targets, items, exclude_ids=(0,))
        times.append(_clock() - t)
    return {
        "users": users,
        "items": items,
        "seconds_median": float(np.median([w for w, _ in times])),
        "cpu_seconds_median": float(np.median([c for _, c in times])),
        "seconds_all": [float(w) for w, _ in times],
        "interactions": int(sum(map(len, histories))),
        "ndcg@10_random": res.metrics["ndcg@10"],
    }


def scale_child(users: int, items: int, chunk: int) -> dict:
    """Stream `users` random top-100 lists through evaluate_ranked; keep per-user vectors for 3 metrics."""
    rng = np.random.default_rng(3)
    keep = {"hr@10": np.empty(users), "ndcg@10": np.empty(users), "mrr": np.empty(users)}
    topk = np.zeros(items, dtype=bool)  # coverage bitmap instead of the (U, 10) top lists
    t = _clock()
    for start in range(0, users, chunk):
        ranked, rel = _lists(rng, min(chunk, users - start), items)
        per = evaluate_ranked(ranked, rel, ks=KS)
        for name, vec in keep.items():
            vec[start : start + len(ranked)] = per[name]
        topk[ranked[:, :10].ravel()] = True
    seconds, cpu = _clock() - t
    # single-target fast path at the same scale: 1 M ranks -> HR/NDCG/MRR
    t = time.perf_counter()
    single_target_metrics(rng.integers(1, items, size=users), KS)
    fast_s = time.perf_counter() - t
    # full ranking in bounded memory: 20 k users x 100 k items, model time (torch.rand) subtracted
    model = {"s": np.zeros(2)}

    def score_fn(hist):
        t0 = _clock()
        out = torch.rand(len(hist), items)
        model["s"] += _clock() - t0
        return out

    full_users = 20_000
    hist = [np.arange(1 + i % 50, 1 + i % 50 + 30) for i in range(full_users)]
    t = _clock()
    evaluate_ranking(
        score_fn, hist, rng.integers(100, items, size=full_users), items, batch_size=512, exclude_ids=(0,)
    )
    full_s, full_cpu = _clock() - t - model["s"]
    return {
        "users": users, "items": items, "depth": 100, "chunk": chunk, "seconds": seconds, "cpu_seconds": cpu,
        "hr@10": float(keep["hr@10"].mean()), "coverage@10": float(topk.sum() / items),
        "single_target_1m_seconds": fast_s,
        "full_ranking_scale": {"users": full_users, "items": items, "batch_size": 512, "seconds_excl_model": full_s, "cpu_seconds_excl_model": full_cpu, "model_seconds": model["s"][0]},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def trec_eval_parity() -> dict:
    """Max per-query |ours - pytrec_eval| on the three random sets of tests/evaluation/test_trec_parity."""
    import pytrec_eval

    from seqbert.data.synthetic import random_trec_case
    from seqbert.evaluation.metrics import trec_name
    from seqbert.evaluation.runs import align, evaluate_aligned, read_qrels, read_run

    ks = (1, 2, 3, 5, 10, 20, 50, 100)
    cut = ",".join(map(str, ks))
    measures = {f"{f}.{cut}" for f in ("ndcg_cut", "P", "recall", "success", "map_cut")} | {
        "map",
        "recip_rank",
    }
    queries = tied = 0
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for seed, shuffle in ((0, True), (1, True), (2, False)):
            case = random_trec_case(2200, seed=seed, shuffle=shuffle)
            run_path, qrels_path = Path(tmp) / "run", Path(tmp) / "qrels"
            run_path.write_text("\n".join(case.run_lines) + "\n")
            qrels_path.write_text("\n".join(case.qrels_lines) + "\n")
            qrels: dict[str, dict[str, int]] = {}
            for line in case.qrels_lines:
                q, _, d, g = line.split()
                qrels.setdefault(q, {})[d] = int(g)
            run: dict[str, dict[str, float]] = {}
            for line in case.run_lines:
                q, _, d, _, sc, _ = line.split()
                run.setdefault(q, {})[d] = float(sc)
            ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
            ours_run, ours_qrels = read_run(run_path), read_qrels(qrels_path)
            for complete in (False, True):
                aligned = align(ours_run, ours_qrels, complete=complete)
                for key, values in evaluate_aligned(aligned, ks).items():
                    want = np.array([ref[q][trec_name(key)] if q in ref else 0.0 for q in aligned.qids])
                    worst = max(worst, float(np.abs(values - want).max()))
            queries += len(aligned.qids)  # the -c set: every qrels query
            tied += case.tied_queries
    return {
        "queries": queries,
        "tied_queries": tied,
        "max_abs_diff": worst,
        "measures": ["ndcg_cut_k", "P_k", "recall_k", "success_k", "map_cut_k", "map", "recip_rank"],
        "cutoffs": list(ks),
        "means": ["ignore_missing (trec_eval)", "complete (trec_eval -c)"],
        "reference": f"pytrec_eval-terrier {_version('pytrec-eval-terrier')} (trec_eval 9)",
    }


def _write_10m(
    run_path: Path, qrels_path: Path, queries: int = 10_000, depth: int = 1_000, ordered: bool = True
) -> None:
    """A 10 M-line TREC run, 3-decimal scores (ties), lines in score order per query (ordered=True) or in
    random order inside each query's block; and 5 judgements per query."""
    import polars as pl

    rng = np.random.default_rng(4)
    score = np.round(rng.normal(size=(queries, depth)), 3)
    score = (-np.sort(-score, axis=1) if ordered else score).ravel()
    q = np.repeat(np.arange(queries), depth)
    doc = (q * 7919 + np.tile(np.arange(depth), queries) * 104729) % 5_000_003  # distinct per query
    pl.DataFrame(
        {
            "qid": q,
            "q0": "Q0",
            "docid": pl.Series(doc).cast(pl.String).str.replace(r"^", "D"),
            "rank": np.tile(np.arange(1, depth + 1), queries),
            "score": score,
            "tag": "bench",
        }
    ).write_csv(run_path, separator=" ", include_header=False)
    jq = np.repeat(np.arange(queries), 5)
    # half of the judged documents were retrieved (j < depth), half not
    jdoc = (jq * 7919 + rng.integers(0, 2 * depth, size=5 * queries) * 104729) % 5_000_003
    pl.DataFrame({"qid": jq, "iter": 0, "docid": pl.Series(jdoc).cast(pl.String).str.replace(r"^", "D"), "rel": rng.integers(0, 4, size=5 * queries)}).unique(["qid", "docid"], keep="first", maintain_order=True).write_csv(qrels_path, separator=" ", include_header=False)  # fmt: skip


def _child_usage(cmd: list[str]) -> dict:
    """Run cmd; its own wall seconds, CPU seconds and peak RSS (os.wait4 reports that child alone)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def scale_10m(ordered: bool = True) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="seqbert_bench_eval_"))
    run_path, qrels_path = tmp / "run10m.trec", tmp / "qrels.txt"
    _write_10m(run_path, qrels_path, ordered=ordered)
    cmd = [sys.executable, "-m", "seqbert.cli", "evaluate", "--run", f"sys={run_path}", "--qrels",
           str(qrels_path), "--out", str(tmp / "report"), "--resamples", "1000"]  # fmt: skip
    ours = _child_usage(cmd)
    floor = _child_usage([sys.executable, "-c", f"import polars as pl; pl.read_csv({str(run_path)!r}, separator=' ', has_header=False)"])  # fmt: skip
    metrics = json.loads((tmp / "report" / "metrics.json").read_text())["runs"]["sys"]
    out = {
        **ours,
        "lines": 10_000_000,
        "lines_in_score_order": ordered,
        "file_mb": run_path.stat().st_size / 2**20,
        "queries": metrics["n"],
        "read_floor_seconds": floor["seconds"],
        "read_floor_peak_rss_mb": floor["peak_rss_mb"],
        "seconds_over_read_floor": ours["seconds"] / floor["seconds"],
        "ndcg@10": metrics["metrics"]["ndcg@10"]["mean"],
        "command": "seqbert evaluate --run sys=RUN --qrels QRELS --out DIR --resamples 1000 (defaults: ks 1,5,10,20, trec_eval ties)",
        "load_average_1m": os.getloadavg()[0],
    }
    for p in (run_path, qrels_path):
        p.unlink()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--scale-child":
        print(json.dumps(scale_child(1_000_000, 100_000, 50_000)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--only" and sys.argv[2:] == ["trec"]:
        from seqbert.training.checkpoint import merge_json

        warnings.filterwarnings("ignore")  # the sets' qrels-only / run-only warnings, by design
        out = Path(__file__).parent / "results" / "evaluation.json"
        parity = trec_eval_parity()
        print(json.dumps(parity), flush=True)
        merge_json(out, "trec_eval_parity", parity)
        scale = scale_10m()
        print(json.dumps(scale), flush=True)
        merge_json(out, "scale_10m", scale)
        unordered = scale_10m(ordered=False)  # the worst case: a full (query, score) sort
        print(json.dumps(unordered), flush=True)
        merge_json(out, "scale_10m_unordered", unordered)
        print(f"wrote {out}")
        return
    warnings.filterwarnings("ignore")  # numba type-safety chatter from ranx
    out = Path(__file__).parent / "results" / "evaluation.json"
    print("scale (child process) ...", flush=True)
    child = subprocess.run(
        [sys.executable, __file__, "--scale-child"], capture_output=True, text=True, check=True
    )
    scale = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(scale), flush=True)
    print("full ranking, ML-1M shape ...", flush=True)
    ml1m = full_ranking_ml1m()
    print(json.dumps(ml1m), flush=True)
    print("parity and speed vs ranx ...", flush=True)
    cases = 2000
    parity = parity_random_cases(cases)
    speed = speed_vs_ranx()
    print(json.dumps(speed), flush=True)
    result = {
        "parity": {"reference": "ranx", "ranx_version": _version("ranx"), "cases": cases + speed["queries"], "max_abs_diff": max(parity, speed["max_abs_diff"]), "random_cases_with_ties_max_abs_diff": parity},
        "scale": {k: scale[k] for k in ("users", "items", "seconds", "cpu_seconds", "peak_rss_mb", "depth", "chunk", "single_target_1m_seconds")},
        "full_ranking_scale": scale["full_ranking_scale"],
        "full_ranking_ml1m": ml1m,
        "speed_vs_reference": speed["ranx_seconds"] / speed["ours_seconds"],
        "speed_detail": speed,
        "speed_vs_reference_cpu": speed["ranx_cpu_seconds"] / speed["ours_cpu_seconds"],
        "machine": {"load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "command": "nice .venv/bin/python benchmarks/bench_eval.py",
    }  # fmt: skip
    result["trec_eval_parity"] = trec_eval_parity()
    result["scale_10m"] = scale_10m()
    result["scale_10m_unordered"] = scale_10m(ordered=False)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"speed vs ranx: ours {speed['ours_seconds']:.2f}s, ranx {speed['ranx_seconds']:.2f}s -> ratio {result['speed_vs_reference']:.1f}x"
    )
    print(f"wrote {out}")


def _clock() -> np.ndarray:
    """(wall, process CPU) seconds: on a shared machine CPU time is the steadier of the two."""
    return np.array([time.perf_counter(), time.process_time()])


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
