"""Parity with trec_eval (through pytrec_eval, which embeds trec_eval 9) on random runs with every trap.

Three random sets of 2,200 query ids each (6,600 in all, ~6,270 of them in the qrels; see `synthetic.random_trec_case` for the traps:
ties, a contradicting rank column, shuffled lines, string-vs-number doc ids, qrels-only and run-only
queries, queries without a relevant document, grades 0-3). Every measure seqbert exposes, at cut-offs
below, at and beyond the list lengths, must equal trec_eval per query to 1e-12, under both means.
"""

import json
import warnings

import numpy as np
import pytest

from seqbert.data.synthetic import random_trec_case
from seqbert.evaluation.cli import main
from seqbert.evaluation.metrics import evaluate_ranked, trec_name
from seqbert.evaluation.runs import align, evaluate_aligned, read_qrels, read_run

pytrec_eval = pytest.importorskip("pytrec_eval")

KS = (1, 2, 3, 5, 10, 20, 50, 100)  # lists hold 1..60 documents: 100 is past every list's end
FAMILIES = ("ndcg_cut", "P", "recall", "success", "map_cut")


def _reference(case) -> dict[str, dict[str, float]]:
    """pytrec_eval's per-query measures for the case (queries in both qrels and run, as trec_eval)."""
    qrels: dict[str, dict[str, int]] = {}
    for line in case.qrels_lines:
        q, _, d, g = line.split()
        qrels.setdefault(q, {})[d] = int(g)
    run: dict[str, dict[str, float]] = {}
    for line in case.run_lines:
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    cut = ",".join(map(str, KS))
    measures = {f"{f}.{cut}" for f in FAMILIES} | {"map", "recip_rank"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def _write(tmp_path, case, name):
    run, qrels = tmp_path / f"{name}.trec", tmp_path / f"{name}.qrels"
    run.write_text("\n".join(case.run_lines) + "\n")
    qrels.write_text("\n".join(case.qrels_lines) + "\n")
    return run, qrels


@pytest.mark.parametrize("seed, shuffle", [(0, True), (1, True), (2, False)])
def test_every_measure_equals_trec_eval_per_query_under_both_means(tmp_path, seed, shuffle):
    # shuffle=False: lines in score order per query block, which takes the fast path that only re-sorts ties
    case = random_trec_case(num_queries=2200, seed=seed, shuffle=shuffle)
    assert case.tied_queries >= 150 and case.qrels_only and case.run_only  # the traps are there
    ref = _reference(case)
    run_path, qrels_path = _write(tmp_path, case, "set")
    run, qrels = read_run(run_path), read_qrels(qrels_path)
    for complete in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            aligned = align(run, qrels, complete=complete)
        assert any(f"{len(case.qrels_only)} qrels queries" in str(w.message) for w in caught)
        assert any(f"{len(case.run_only)} run queries" in str(w.message) for w in caught)
        ours = evaluate_aligned(aligned, KS)
        expected_q = sorted(set(ref) | (set(case.qrels_only) if complete else set()))
        assert aligned.qids == expected_q
        worst = 0.0
        for key, values in ours.items():
            name = trec_name(key)
            # -c: a qrels query absent from the run counts as 0 in every measure
            want = np.array([ref[q][name] if q in ref else 0.0 for q in aligned.qids])
            worst = max(worst, float(np.abs(values - want).max()))
            np.testing.assert_allclose(
                values, want, rtol=0, atol=1e-12, err_msg=f"{name} complete={complete}"
            )
        assert worst <= 1e-12
        # the fast path (relevant hits only) equals the dense reference over the full ranked lists
        dense = evaluate_ranked(aligned.ranked, aligned.rel_ids, aligned.rel_grades, KS)
        for key, values in ours.items():
            np.testing.assert_allclose(values, dense[key], rtol=0, atol=1e-12, err_msg=key)


def test_the_old_rank_column_order_differs_on_tied_queries_only(tmp_path):
    """--ties rank (the previous default) must disagree with trec_eval somewhere, and only on ties."""
    case = random_trec_case(num_queries=600, seed=5)
    ref = _reference(case)
    run_path, qrels_path = _write(tmp_path, case, "set")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aligned = align(read_run(run_path), read_qrels(qrels_path), ties="rank")
    ours = evaluate_aligned(aligned, (10,))
    differs = np.array([abs(ours["map"][i] - ref[q]["map"]) > 1e-12 for i, q in enumerate(aligned.qids)])
    assert differs.any()
    scores: dict[str, list[float]] = {}
    for line in case.run_lines:
        q, _, _, _, s, _ = line.split()
        scores.setdefault(q, []).append(float(s))
    tied = np.array([len(set(scores[q])) < len(scores[q]) for q in aligned.qids])
    assert not (differs & ~tied).any()


def test_cli_per_query_json_and_txt_match_trec_eval(tmp_path):
    case = random_trec_case(num_queries=300, seed=7)
    ref = _reference(case)
    run_path, qrels_path = _write(tmp_path, case, "set")
    measures = "nDCG@10,RR,AP,P@5,R@100,AP@10,Success@1"
    base = ["evaluate", "--run", f"sys={run_path}", "--qrels", str(qrels_path), "--resamples", "20"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(base + ["--out", str(tmp_path / "a"), "--measures", measures,
                            "--per-query", str(tmp_path / "pq.json")]) == 0  # fmt: skip
        assert main(base + ["--out", str(tmp_path / "b"), "--measures", measures, "-c",
                            "--per-query", str(tmp_path / "pq.txt")]) == 0  # fmt: skip
    names = ["ndcg_cut_10", "recip_rank", "map", "P_5", "recall_100", "map_cut_10", "success_1"]
    table = json.loads((tmp_path / "pq.json").read_text())
    assert sorted(table) == sorted(ref)
    for q, values in table.items():
        assert list(values) == names
        for name, value in values.items():
            assert abs(value - ref[q][name]) <= 1e-12, (q, name)
    lines = [line.split("\t") for line in (tmp_path / "pq.txt").read_text().splitlines()]
    per = {(m.strip(), q): float(v) for m, q, v in lines}
    assert len(lines) == len(names) * (len(ref) + len(case.qrels_only) + 1)
    for q in case.qrels_only:
        assert per["map", q] == 0.0
    q0 = next(iter(ref))
    assert per["ndcg_cut_10", q0] == pytest.approx(ref[q0]["ndcg_cut_10"], abs=5e-5)  # printed to 4 places
    full = ref | {q: {n: 0.0 for n in names} for q in case.qrels_only}
    assert per["map", "all"] == pytest.approx(np.mean([v["map"] for v in full.values()]), abs=5e-5)
    meta = json.loads((tmp_path / "b" / "metrics.json").read_text())["runs"]["sys"]["metadata"]
    assert meta["ties"] == "trec_eval" and meta["mean"] == "complete"
    assert meta["qrels_queries_missing_from_run"] == len(case.qrels_only)
    mean_a = json.loads((tmp_path / "a" / "metrics.json").read_text())["runs"]["sys"]
    assert mean_a["metadata"]["mean"] == "ignore_missing"
    assert mean_a["metrics"]["map"]["mean"] == pytest.approx(np.mean([v["map"] for v in ref.values()]))
