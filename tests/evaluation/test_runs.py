import numpy as np
import polars as pl
import pytest

from seqbert.evaluation.metrics import evaluate_ranked, mean_metrics
from seqbert.evaluation.runs import RunFormatError, align, evaluate_aligned, read_qrels, read_run

TREC_RUN = """q1 Q0 d3 2 0.5 sys
q1 Q0 d1 1 0.9 sys
q1 Q0 d2 3 0.5 sys
q2 Q0 d9 1 2.0 sys
"""
TREC_QRELS = "q1 0 d1 1\nq1 0 d2 2\nq2 0 d7 1\n"


def _write(path, text, newline="\n"):
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def test_trec_run_order_and_qrels(tmp_path):
    run = read_run(_write(tmp_path / "a.trec", TREC_RUN))
    # score descending; the tie d3/d2 at 0.5: docid descending (trec_eval), here also the rank column's order
    assert run.lists == {"q1": ["d1", "d3", "d2"], "q2": ["d9"]}
    qrels = read_qrels(_write(tmp_path / "q.txt", TREC_QRELS))
    assert qrels.judgements == {"q1": {"d1": 1.0, "d2": 2.0}, "q2": {"d7": 1.0}}
    a = align(run, qrels)
    assert a.qids == ["q1", "q2"]
    m = mean_metrics(evaluate_ranked(a.ranked, a.rel_ids, a.rel_grades, ks=(1, 3)))
    assert m["hr@1"] == 0.5 and m["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert [a.docs[i] for i in a.ranked[0]] == ["d1", "d3", "d2"]


def test_beir_tsv_qrels_with_crlf(tmp_path):
    path = _write(
        tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\n1\t31715818\t1\n3\t14717500\t2\n", "\r\n"
    )
    qrels = read_qrels(path)
    assert qrels.judgements == {"1": {"31715818": 1.0}, "3": {"14717500": 2.0}}
    assert qrels.first_line == {"1": 2, "3": 3}


def test_malformed_and_duplicate_lines_name_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.trec", TREC_RUN + "q2 Q0 d8 2\nq2 Q0 d9 3 1.0 sys\nq2 Q0 d5 x 1.0 sys\n")
    with pytest.raises(RunFormatError) as err:
        read_run(path)
    text = str(err.value)
    assert f"{path}:5: expected 6 fields" in text
    assert f"{path}:6: duplicate entry for query 'q2', doc 'd9' (first on line 4)" in text
    assert f"{path}:7: rank 'x'" in text
    with pytest.warns(UserWarning, match="3 problem"):
        run = read_run(path, errors="warn")
    assert run.lists["q2"] == ["d9"] and len(run.issues) == 3
    dup = _write(tmp_path / "dup.txt", TREC_QRELS + "q1 0 d1 0\nq1 0\n")
    with pytest.raises(RunFormatError, match=r"dup.txt:4: duplicate judgement.*\n.*dup.txt:5: expected"):
        read_qrels(dup)


def test_unknown_and_missing_queries_follow_trec_eval(tmp_path):
    # was: both an error by default. trec_eval leaves a qrels query without results out of the mean
    # (-c counts it as 0) and ignores run-only queries; both are now a warning with the count, and
    # strict=True (--strict) is the old error.
    run = read_run(_write(tmp_path / "a.trec", TREC_RUN + "q9 Q0 d1 1 1.0 sys\n"))
    qrels = read_qrels(_write(tmp_path / "q.txt", TREC_QRELS + "q3 0 d1 1\n"))
    with pytest.raises(RunFormatError, match="1 qrels query with no line in the run.*1 run query not in"):
        align(run, qrels, strict=True)
    with pytest.warns(UserWarning, match="left out of the mean"):
        a = align(run, qrels)
    assert a.qids == ["q1", "q2"] and a.missing == ["q3"] and a.run_only == ["q9"]
    with pytest.warns(UserWarning, match="counted as 0"):
        c = align(run, qrels, complete=True)
    assert c.qids == ["q1", "q2", "q3"] and (c.ranked[2] == -1).all()  # scored as an empty ranking
    assert evaluate_aligned(c, (1,))["hr@1"].tolist() == [1.0, 0.0, 0.0]


def test_tie_rules_and_depth(tmp_path):
    # d10 and d9 tie at 0.5; the rank column says d10 first; trec_eval: docid descending -> "d9" > "d10"
    run = read_run(_write(tmp_path / "t.trec", "q Q0 d10 1 0.5 s\nq Q0 d9 2 0.5 s\nq Q0 d1 3 0.9 s\n"))
    qrels = read_qrels(_write(tmp_path / "q.txt", "q 0 d10 1\n"))
    order = {t: align(run, qrels, ties=t) for t in ("trec_eval", "rank", "optimistic", "pessimistic")}
    docs = {t: [a.docs[i] for i in a.ranked[0]] for t, a in order.items()}
    assert docs == {
        "trec_eval": ["d1", "d9", "d10"],
        "rank": ["d1", "d10", "d9"],
        "optimistic": ["d1", "d10", "d9"],
        "pessimistic": ["d1", "d9", "d10"],
    }
    assert run.lists == {"q": ["d1", "d9", "d10"]}
    cut = align(run, qrels, depth=1)
    assert [cut.docs[i] for i in cut.ranked[0]] == ["d1"]
    with pytest.raises(ValueError, match="depth must be >= 1"):
        align(run, qrels, depth=0)
    with pytest.raises(ValueError, match="ties must be one of"):
        align(run, qrels, ties="random")


def test_csv_and_parquet_runs(tmp_path):
    csv = _write(tmp_path / "r.csv", "user,item,rank\n7,b,2\n7,a,1\n8,c,1\n")
    assert read_run(csv).lists == {"7": ["a", "b"], "8": ["c"]}
    pq = tmp_path / "r.parquet"
    pl.DataFrame({"qid": ["7", "7", "8"], "docid": ["a", "b", "c"], "score": [0.1, 0.3, None]}).write_parquet(
        pq
    )
    with pytest.raises(RunFormatError, match="r.parquet:4: missing or non-numeric"):
        read_run(pq)
    with pytest.raises(RunFormatError, match="needs a 'score' or a 'rank'"):
        read_run(_write(tmp_path / "s.csv", "user,item\n1,2\n"))
    qrels_csv = _write(tmp_path / "q.csv", "user,item\n7,a\n8,c\n")
    a = align(read_run(csv), read_qrels(qrels_csv))
    np.testing.assert_array_equal(
        evaluate_ranked(a.ranked, a.rel_ids, a.rel_grades, ks=(1,))["hr@1"], [1.0, 1.0]
    )


@pytest.mark.parametrize("ties", ["trec_eval", "rank", "optimistic", "pessimistic"])
def test_ranked_order_equals_one_full_sort(ties):
    """A run in score order per query block only re-sorts its ties, a shuffled one is lexsorted first; both
    equal one multi-key polars sort (up to the order of query blocks, which no measure sees)."""
    from seqbert.evaluation.runs import _ranked_order, _sort_keys

    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 40, size=300)
    q = np.repeat(rng.permutation(300), sizes).astype(np.int32)  # blocks in random query order
    score = np.concatenate([-np.sort(-np.round(rng.normal(size=n), 1)) for n in sizes])  # many ties
    n = len(q)
    keys = pl.DataFrame(
        {
            "q": q,
            "score": score,
            "docid": rng.integers(0, 10**6, size=n).astype(str),
            "rank": rng.permutation(n).astype(float),
            "line": np.arange(1, n + 1),
            "_gain": rng.integers(0, 3, size=n).astype(float),
        }
    )
    names, descending = _sort_keys(ties)
    full = (
        keys.select(pl.arg_sort_by(names, descending=descending, maintain_order=True)).to_series().to_numpy()
    )
    fast = _ranked_order(keys, ties)
    # same lines in the same places once queries are compared by block (the fast path keeps file order)
    block_order = {b: i for i, b in enumerate(dict.fromkeys(q.tolist()))}
    by_block = np.argsort([block_order[x] for x in q[full]], kind="stable")
    np.testing.assert_array_equal(fast, full[by_block])
    assert not np.array_equal(fast, np.arange(n))  # ties were re-ordered
    # shuffled lines: (query, score) lexsort + tie re-sort equals one full multi-key sort
    shuffled = keys[rng.permutation(n)]
    full = shuffled.select(pl.arg_sort_by(names, descending=descending, maintain_order=True)).to_series()
    np.testing.assert_array_equal(_ranked_order(shuffled, ties), full.to_numpy())


def test_a_run_with_no_usable_line_scores_zero_under_complete(tmp_path):
    with pytest.warns(UserWarning):
        run = read_run(_write(tmp_path / "e.trec", "q1 Q0 d1 x 1.0 s\n"), errors="warn")
        a = align(run, read_qrels(_write(tmp_path / "q.txt", TREC_QRELS)), complete=True)
    assert run.frame.height == 0 and a.qids == ["q1", "q2"]
    assert evaluate_aligned(a, (1,))["map"].tolist() == [0.0, 0.0]
