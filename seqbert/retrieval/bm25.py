"""BM25 first-stage retrieval over a text corpus with `bm25s` (Lù 2024): English stopwords, Snowball
stemming when PyStemmer is installed.

    index = Bm25Index(doc_texts)
    rows = index.search(["query one", "query two"], k=100)   # (Q, k) corpus rows, best first
    s = index.scores(["query one", "query two"], rows)        # (Q, k) their BM25 scores (score fusion)

Weighted queries (pseudo-relevance feedback, `seqbert.retrieval.prf.rm3_weights`): a query as {term: w},
scored s(d) = sum_t w_t BM25(t, d), as Lucene scores a boosted bag of terms; {t: count of t in q} is
plain BM25 (`weighted_search` equals `search` then, tests/retrieval/test_prf.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


class Bm25Index:
    def __init__(self, texts: Sequence[str], stem: bool = True) -> None:
        import bm25s  # optional (the `retrieval` extra): imported when an index is built

        if not texts:
            raise ValueError("Bm25Index needs at least one document")
        self._bm25s = bm25s
        self.stemmer = None
        if stem:
            try:
                import Stemmer

                self.stemmer = Stemmer.Stemmer("english")
            except ImportError:
                print("PyStemmer not installed: BM25 without stemming")
        self.size = len(texts)
        self.texts = list(texts)
        self._doc_terms: list[Counter] | None = None
        self.retriever = bm25s.BM25()
        self.retriever.index(self._tokenize(texts), show_progress=False)

    def _tokenize(self, texts: Sequence[str]):
        return self._bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> np.ndarray:
        """Top-k corpus rows per query (Q, k), best first; k is capped at the corpus size."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        docs, _ = self.retriever.retrieve(
            self._tokenize(queries), k=min(k, self.size), show_progress=False, n_threads=0
        )  # (Q, k)
        return np.asarray(docs, dtype=np.int64)

    def scores(self, queries: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """BM25 score of corpus row rows[q, j] for query q -> (Q, C) float64; -1 padding scores -inf.

        Any row may be asked, not only the query's top-k: score fusion needs every candidate of the union
        of several first stages scored by each of them.
        """
        self._check_rows(rows, len(queries))
        full = np.stack([self.retriever.get_scores(words) for words in self.terms(queries)])  # (Q, N)
        return self.at_rows(full, rows)

    def terms(self, texts: Sequence[str]) -> list[list[str]]:
        """The index's analysis of each text: lower-cased, stopwords out, stemmed -> its terms in order."""
        return self._bm25s.tokenize(
            list(texts), stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False
        )

    def doc_terms(self, rows: Sequence[int]) -> list[Counter]:
        """Term counts of corpus rows (the corpus is analysed once, on first use)."""
        if self._doc_terms is None:
            self._doc_terms = [Counter(t) for t in self.terms(self.texts)]
        return [self._doc_terms[r] for r in rows]

    def weighted_full(self, weights: dict[str, float]) -> np.ndarray:
        """sum_t w_t BM25(t, d) for every document d -> (N,) float64; terms outside the vocabulary add 0.

        Reads bm25s' precomputed (term -> documents) score matrix: BM25(t, d) is its entry."""
        m, vocab = self.retriever.scores, self.retriever.vocab_dict
        out = np.zeros(self.size)
        for term, w in weights.items():
            t = vocab.get(term)
            if t is None or w == 0:
                continue
            lo, hi = m["indptr"][t], m["indptr"][t + 1]
            out[m["indices"][lo:hi]] += w * m["data"][lo:hi]  # a document appears once per term
        return out

    def weighted_matrix(self, weights: Sequence[dict[str, float]]) -> np.ndarray:
        """`weighted_full` of every weighted query -> (Q, N): compute once, then `top_rows` and `at_rows`."""
        out = np.zeros((len(weights), self.size))  # (Q, N)
        for q, w in enumerate(weights):
            out[q] = self.weighted_full(w)
        return out

    def weighted_search(self, weights: Sequence[dict[str, float]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows of weighted queries (Q, k) best first and their scores (Q, k); ties by row."""
        return self.top_rows(self.weighted_matrix(weights), k)

    def weighted_scores(self, weights: Sequence[dict[str, float]], rows: np.ndarray) -> np.ndarray:
        """`scores` for weighted queries: s(rows[q, j]) -> (Q, C) float64; -1 padding scores -inf."""
        self._check_rows(rows, len(weights))
        return self.at_rows(self.weighted_matrix(weights), rows)

    def top_rows(self, full: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows (Q, k) of whole-corpus scores full (Q, N), best first, ties by row, and their scores."""
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be in [1, {self.size}], got {k}")
        rows = np.empty((len(full), k), dtype=np.int64)
        for q, f in enumerate(full):
            kth = np.partition(f, self.size - k)[self.size - k]  # the k-th largest score
            cand = np.flatnonzero(f >= kth)  # every document that can make the top k, ties included
            rows[q] = cand[np.lexsort((cand, -f[cand]))][:k]  # by score, then row
        return rows, np.take_along_axis(full, rows, axis=1)

    def at_rows(self, full: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """full[q, rows[q, j]] (Q, C) of whole-corpus scores full (Q, N); -1 padding scores -inf."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows >= 0, np.take_along_axis(full, np.maximum(rows, 0), axis=1), -np.inf)

    def _check_rows(self, rows: np.ndarray, num_queries: int) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or len(rows) != num_queries:
            raise ValueError(f"rows must have shape ({num_queries}, C), got {rows.shape}")
        if rows.size and rows.max() >= self.size:
            raise ValueError(f"row {int(rows.max())} is outside the corpus of {self.size} documents")
