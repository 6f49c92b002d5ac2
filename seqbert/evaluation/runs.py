"""Order a run under a tie rule, join it with the qrels, and compute trec_eval's measures per query.

Reading is `seqbert.data.trec` (re-exported here): the one run/qrels reader, shared with retrieval.

Order inside a query (`ties`):
- "trec_eval" (default): score descending, ties by docid in descending string order; the rank column is
  ignored. This is what trec_eval 9 and pytrec_eval do (qsort on (-score, docid) with strcmp reversed),
  so the numbers are theirs.
- "rank": score descending, ties by the file's rank ascending, then file order (the order the system
  meant). A run with only a rank column is ordered by rank.
- "optimistic" / "pessimistic": within a score tie the relevant (higher-grade) documents come first /
  last; a bound on what the tie can be worth. Remaining ties: docid descending.

Queries (`complete`): a query in the qrels but absent from the run is left out of the mean by default
(trec_eval's default) or counted with every measure 0 with complete=True (`trec_eval -c`). Queries only
in the run are left out (they cannot be scored). Both counts are on `Aligned` and reported by the CLI;
strict=True turns either into an error.

Measures (trec_eval 9 definitions; a document is relevant iff its grade >= 1, trec_eval's default
relevance level; rel_q = number of relevant documents of the query in the qrels; i is the 1-based
position):
- P_k = |{relevant in the top k}| / k (k even when the list is shorter); recall_k = same / rel_q;
  success_k = 1[any relevant in the top k];
- ndcg_cut_k = sum_{i<=k} g_i / log2(i + 1) / IDCG_k, g = the qrels grade (linear gains; grades < 1 give
  0), IDCG from the qrels' grades sorted descending;
- recip_rank = 1 / (position of the first relevant document) over the whole list;
- map = sum over relevant positions of precision@i / rel_q; map_cut_k the same over i <= k.
Every one is 0 for a query with rel_q = 0 (trec_eval includes such queries in the mean).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from seqbert.data.trec import (  # noqa: F401  (re-exported: the public reader of this package)
    DOC_COLUMNS,
    GRADE_COLUMNS,
    QUERY_COLUMNS,
    Issue,
    Qrels,
    Run,
    RunFormatError,
    pick_column,
    read_qrels,
    read_run,
    read_table,
    report_issues,
)

TIE_RULES = ("trec_eval", "rank", "optimistic", "pessimistic")


@dataclass(frozen=True)
class Aligned:
    """A run ordered and joined with its qrels; queries sorted by id.

    Flat arrays hold only the retrieved documents with grade >= 1 (the only ones any measure reads), so
    they stay small whatever the run's size; the dense (Q, K) `ranked` is kept only to `keep` positions.
    """

    qids: list[str]  # (Q,) evaluated queries
    ranked: np.ndarray  # (Q, K) int doc indices into `docs`, -1 padding (K <= keep)
    rel_ids: np.ndarray  # (Q, R) int doc indices, -1 padding
    rel_grades: np.ndarray  # (Q, R) float
    docs: list[str]  # doc index -> doc id, for per-document data (popularity, features)
    issues: list[Issue]
    ties: str = "trec_eval"
    complete: bool = False
    missing: list[str] = field(default_factory=list)  # qrels queries with no line in the run
    run_only: list[str] = field(default_factory=list)  # run queries absent from the qrels (left out)
    hit_query: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (H,) query index
    hit_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (H,) 0-based position
    hit_grade: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (H,) grade >= 1

    @property
    def mean(self) -> str:
        return "complete" if self.complete else "ignore_missing"


def _sort_keys(ties: str) -> tuple[list[str], list[bool]]:
    if ties == "trec_eval":
        return ["q", "score", "docid"], [False, True, True]
    if ties == "rank":
        return ["q", "score", "rank", "line"], [False, True, False, False]
    return ["q", "score", "_gain", "docid"], [False, True, ties == "optimistic", True]


def _ranked_order(keys: pl.DataFrame, ties: str) -> np.ndarray:
    """(N,) permutation putting the lines in ranked order under `ties`, each query's lines contiguous.

    Two steps: order by (query, score descending), then re-sort only the tied stretches by the tie keys
    (docid, rank/line or gain). A run whose queries are contiguous blocks already in score order (what
    systems write) skips the first step: an O(N) check. The first step is a numeric numpy lexsort,
    because a multi-column sort with a string column (polars row encoding) costs ~1 GB at 10 M lines.
    """
    names, descending = _sort_keys(ties)
    q, score = keys["q"].to_numpy(), keys["score"].to_numpy()
    n = len(q)
    same_q = q[1:] == q[:-1]
    in_order = (
        n > 0
        and int(n - same_q.sum()) == keys["q"].n_unique()  # every query one contiguous block
        and bool(np.all(score[1:][same_q] <= score[:-1][same_q]))  # scores non-increasing inside a block
    )
    if in_order:
        perm = np.arange(n)
    else:
        perm = np.lexsort((-score, q))  # stable: equal (query, score) lines keep file order
        q, score = q[perm], score[perm]
        same_q = q[1:] == q[:-1]
    tie = same_q & (score[1:] == score[:-1])  # ranked line i + 1 ties with line i
    if not tie.any():
        return perm
    at = np.unique(np.concatenate([np.flatnonzero(tie), np.flatnonzero(tie) + 1]))  # tied places
    group = np.cumsum(np.concatenate([[True], ~tie]))[at]  # one id per tied stretch, increasing
    sub = keys.select(names[2:])[perm[at]].with_columns(_group=group)  # only the tie keys travel
    order = (
        sub.select(
            pl.arg_sort_by(["_group"] + names[2:], descending=[False] + descending[2:], maintain_order=True)
        )
        .to_series()
        .to_numpy()
    )
    perm[at] = perm[at][order]  # each stretch keeps its places, now in tie order
    return perm


def align(
    run: Run,
    qrels: Qrels,
    depth: int | None = None,
    errors: str = "raise",
    ties: str = "trec_eval",
    complete: bool = False,
    strict: bool = False,
    keep: int | None = None,
) -> Aligned:
    """Order `run` under `ties`, cut it at `depth`, and join it with `qrels` (see the module docstring).

    errors: "raise" or "warn", as for the readers (file problems are theirs; kept so callers pass one policy).
    strict: a qrels query absent from the run, or a run query absent from the qrels, is an error
    (`RunFormatError`); otherwise each kind is one warning with its count. keep: positions kept in the
    dense `ranked` (None = all; the measures never need it).
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1 (or None for the whole run), got {depth}")
    if keep is not None and keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if errors not in ("raise", "warn"):
        raise ValueError(f"errors must be 'raise' or 'warn', got {errors!r}")
    run_q = set(run.frame["qid"].unique().to_list())
    qrels_q = set(qrels.frame["qid"].unique().to_list())
    missing, run_only = sorted(qrels_q - run_q), sorted(run_q - qrels_q)
    issues: list[Issue] = []
    if missing:
        text = f"{len(missing)} qrels quer{'y' if len(missing) == 1 else 'ies'} with no line in the run {run.path} (e.g. {missing[:3]})"
        mode = (
            "counted as 0 (complete)"
            if complete
            else "left out of the mean (trec_eval default; -c counts them as 0)"
        )
        issues.append(Issue(qrels.path, 0, f"{text}: {mode}"))
    if run_only:
        issues.append(
            Issue(
                run.path,
                0,
                f"{len(run_only)} run quer{'y' if len(run_only) == 1 else 'ies'} not in the qrels {qrels.path} (e.g. {run_only[:3]}): left out",
            )
        )
    if issues and strict:
        raise RunFormatError("; ".join(i.message for i in issues) + " (strict)")
    for issue in issues:
        warnings.warn(issue.message, stacklevel=2)

    qids = sorted(qrels_q if complete else qrels_q & run_q)
    frame = run.frame
    n = frame.height
    # query index of every line, as a column of its own (no copy of the run); run-only queries get the
    # indices after the evaluated ones, so every query keeps its own block
    order = qids + run_only
    q = frame.select(
        pl.col("qid").replace_strict(order, np.arange(len(order)), return_dtype=pl.Int32)
    ).to_series()
    # the judged lines: a cheap membership filter on docid first, so the join sees only candidates
    judged_docs = qrels.frame["docid"].unique().implode()
    judged_rows = (
        frame.select("qid", "docid")
        .with_row_index("_row")
        .filter(pl.col("docid").is_in(judged_docs))
        .join(qrels.frame.select("qid", "docid", "grade"), on=["qid", "docid"], how="inner")
    )
    grade = judged_rows["grade"].to_numpy()
    relevant = judged_rows["_row"].to_numpy()[grade >= 1]  # relevant iff grade >= 1 (trec_eval)
    relevant_gain = grade[grade >= 1]
    keys = pl.DataFrame({"q": q, "score": frame["score"], "docid": frame["docid"]})
    if ties == "rank":
        keys = keys.with_columns(frame["rank"], frame["line"])
    if ties in ("optimistic", "pessimistic"):
        gain = np.zeros(n)
        gain[relevant] = relevant_gain
        keys = keys.with_columns(_gain=gain)
        del gain
    perm = _ranked_order(keys, ties)  # (N,) lines in ranked order, each query's lines contiguous
    del keys
    # block starts in ranked order; a line's position = its ranked index - its block's start. Only the
    # relevant lines (and the first `keep` of each block) need one, so no (N,) position array is built.
    qs = q.to_numpy()[perm]  # (N,) query of each ranked line
    starts = np.flatnonzero(np.concatenate([[n > 0], qs[1:] != qs[:-1]]))  # (B,) one per query block
    ends = np.append(starts[1:], n)
    block_q = qs[starts]
    del qs
    evaluated = block_q < len(qids)
    is_relevant = np.zeros(n, dtype=bool)
    is_relevant[relevant] = True
    ranked_hit = np.flatnonzero(is_relevant[perm])  # ranked indices of the relevant lines
    del is_relevant
    block = np.searchsorted(starts, ranked_hit, side="right") - 1
    hit_pos = ranked_hit - starts[block]
    keep_hit = evaluated[block] & (True if depth is None else hit_pos < depth)
    gain_of = dict(zip(relevant.tolist(), relevant_gain.tolist()))
    hit_query, hit_pos = block_q[block][keep_hit].astype(np.int64), hit_pos[keep_hit].astype(np.int64)
    hit_grade = np.array([gain_of[r] for r in perm[ranked_hit[keep_hit]].tolist()], dtype=np.float64)
    order = np.lexsort((hit_pos, hit_query))  # by (query, position): blocks may come in file order
    hit_query, hit_pos, hit_grade = hit_query[order], hit_pos[order], hit_grade[order]
    # the first `keep` lines of every evaluated block (all of them when keep is None), for `ranked`
    limit = ends - starts if keep is None else np.minimum(ends - starts, keep)
    if depth is not None:
        limit = np.minimum(limit, depth)
    limit = np.where(evaluated, limit, 0)
    top_pos = np.arange(limit.sum()) - np.repeat(np.cumsum(limit) - limit, limit)
    top_ranked = np.repeat(starts, limit) + top_pos
    top = pl.DataFrame(
        {
            "q": np.repeat(block_q, limit).astype(np.int64),
            "pos": top_pos.astype(np.int64),
            "docid": frame["docid"].gather(perm[top_ranked]),
        }
    )
    # dense views: qrels (Q, R) and the first `keep` positions of the run (Q, K)
    queries = pl.DataFrame({"qid": qids, "q": np.arange(len(qids), dtype=np.int64)})
    judged = qrels.frame.join(queries, on="qid", how="inner").sort(["q", "line"])
    docs = pl.concat([judged["docid"], top["docid"]]).unique(maintain_order=True)
    code = pl.DataFrame({"docid": docs, "code": np.arange(len(docs), dtype=np.int64)})
    judged = judged.join(code, on="docid", how="left", maintain_order="left")
    top = top.join(code, on="docid", how="left", maintain_order="left")
    q, k = len(qids), int(top["pos"].max() + 1) if top.height else 0
    ranked = np.full((q, k), -1, dtype=np.int64)
    ranked[top["q"].to_numpy(), top["pos"].to_numpy()] = top["code"].to_numpy()
    jq = judged["q"].to_numpy()
    jpos = np.arange(len(jq)) - np.searchsorted(jq, jq)  # 0-based index inside the query (jq sorted)
    r = int(jpos.max() + 1) if len(jpos) else 0
    rel_ids = np.full((q, r), -1, dtype=np.int64)
    rel_grades = np.zeros((q, r))
    rel_ids[jq, jpos] = judged["code"].to_numpy()
    rel_grades[jq, jpos] = judged["grade"].to_numpy()
    return Aligned(
        qids,
        ranked,
        rel_ids,
        rel_grades,
        docs.to_list(),
        issues,
        ties,
        complete,
        missing,
        run_only,
        hit_query,
        hit_pos,
        hit_grade,
    )


def evaluate_aligned(
    aligned: Aligned, ks: tuple[int, ...] = (1, 5, 10, 20), exponential: bool = False
) -> dict[str, np.ndarray]:
    """Per-query measures (Q,) from the flat hit arrays: the fast path of `metrics.evaluate_ranked`.

    Same keys and values as `evaluate_ranked(aligned.ranked, aligned.rel_ids, aligned.rel_grades, ks)`
    (tested equal), but it reads only the relevant retrieved documents, never a (Q, K) matrix.
    Keys: hr@k (success_k), recall@k, precision@k (P_k), ndcg@k (ndcg_cut_k), map@k (map_cut_k), mrr
    (recip_rank), map.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    nq = len(aligned.qids)
    hq, hpos, hgain = aligned.hit_query, aligned.hit_pos, aligned.hit_grade  # (H,) sorted by (q, pos)
    # the i-th relevant document of its query (0-based): hits are sorted by query, then position
    rel_rank = np.arange(len(hq)) - np.searchsorted(hq, hq)
    prec_at_hit = (rel_rank + 1) / (hpos + 1)  # precision at each relevant position
    # the ideal ranking: each query's grades >= 1, descending
    grades = np.where(aligned.rel_grades >= 1, aligned.rel_grades, 0.0)
    ideal = -np.sort(-grades, axis=1)  # (Q, R)
    num_rel = (ideal > 0).sum(axis=1)
    if exponential:
        hgain, ideal = np.exp2(hgain) - 1, np.exp2(ideal) - 1
    discount = 1.0 / np.log2(np.arange(2, ideal.shape[1] + 2))  # (R,)

    def per_query(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return np.bincount(hq[mask], weights=w, minlength=nq).astype(np.float64)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(nq), where=b > 0)

    out: dict[str, np.ndarray] = {}
    for k in ks:
        inside = hpos < k
        hits = per_query(inside)
        out[f"hr@{k}"] = (hits > 0).astype(np.float64)
        out[f"recall@{k}"] = ratio(hits, num_rel)
        out[f"precision@{k}"] = hits / k
        dcg = per_query(inside, hgain / np.log2(hpos + 2))
        out[f"ndcg@{k}"] = ratio(dcg, (ideal[:, :k] * discount[:k]).sum(axis=1))
        out[f"map@{k}"] = ratio(per_query(inside, prec_at_hit), num_rel)
    everything = np.ones(len(hq), dtype=bool)
    first = np.zeros(nq)
    is_first = rel_rank == 0
    first[hq[is_first]] = 1.0 / (hpos[is_first] + 1)
    out["mrr"] = first
    out["map"] = ratio(per_query(everything, prec_at_hit), num_rel)
    return out
