"""BM25 first-stage retrieval over a text corpus with `bm25s` (Lù 2024): English stopwords, Snowball
stemming when PyStemmer is installed.

    index = Bm25Index(doc_texts)
    rows = index.search(["query one", "query two"], k=100)   # (Q, k) corpus rows, best first
    s = index.scores(["query one", "query two"], rows)        # (Q, k) their BM25 scores (score fusion)
"""

from __future__ import annotations

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
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or len(rows) != len(queries):
            raise ValueError(f"rows must have shape ({len(queries)}, C), got {rows.shape}")
        if rows.size and rows.max() >= self.size:
            raise ValueError(f"row {int(rows.max())} is outside the corpus of {self.size} documents")
        tokens = self._bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False
        )
        out = np.full(rows.shape, -np.inf)
        for q, words in enumerate(tokens):
            full = self.retriever.get_scores(words)  # (N,) the query against every document
            keep = rows[q] >= 0
            out[q, keep] = full[rows[q, keep]]
        return out
