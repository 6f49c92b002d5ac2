"""Item and user side features: read from a table next to the interactions, aligned to an id space.

A feature table has one row per entity (item or user) and an id column; every other column used is either
categorical (strings; a multi-valued cell such as "Comedy|Drama" holds several values split by
`multi_value_sep`) or numeric. `align_features` maps it onto the rows a model uses (internal item ids, or
the users of a `SequenceDataset`) and makes the unknown case explicit instead of silently dropping it:

- categorical values become indices  0 = padding (multi-valued cells are right-padded with 0),
  1 = unknown (the entity has no row in the table, or the cell is empty), 2.. = the values seen;
- numeric values are standardised over the entities that have one; a missing value is 0 (the mean) and
  `known` says which entities had a row at all;
- entities of the id space absent from the table, and table ids absent from the id space, are counted and
  logged; a duplicated id in the table is an error naming the file and the id.

    table = read_feature_table(FeatureFile(path="movies.csv", id_col="item", categorical=("genres",),
                                           numeric=("year",), multi_value_sep="|"))
    feats = align_features(table, keys)   # keys[i]: the external id of row i (None for special ids)
    feats.categorical["genres"]           # (N, M) int64
    feats.numeric                         # (N, F) float32
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

PAD, UNKNOWN, FIRST_VALUE = 0, 1, 2


@dataclass(frozen=True)
class FeatureFile:
    """Where a feature table lives and which of its columns are features."""

    path: str  # CSV / TSV (header row) or parquet
    id_col: str
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    multi_value_sep: str | None = None  # split categorical cells into several values ("|" for genres)
    sep: str | None = None  # field delimiter; default "," (".tsv": tab)

    def __post_init__(self) -> None:
        if not self.path or not self.id_col:
            raise ValueError("a feature file needs `path` and `id_col`")
        if not self.categorical and not self.numeric:
            raise ValueError(f"feature file {self.path}: name at least one `categorical` or `numeric` column")
        both = set(self.categorical) & set(self.numeric)
        if both or self.id_col in set(self.categorical) | set(self.numeric):
            raise ValueError(
                f"feature file {self.path}: a column is used twice ({sorted(both) or self.id_col})"
            )


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """A feature table in memory: `frame` holds `id_col` (string) and the feature columns."""

    frame: pl.DataFrame
    id_col: str
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    multi_value_sep: str | None = None
    source: str = "<frame>"  # for error messages

    def __post_init__(self) -> None:
        missing = [c for c in (self.id_col, *self.categorical, *self.numeric) if c not in self.frame.columns]
        if missing:
            raise ValueError(
                f"{self.source}: unknown column(s) {missing}; the table has {self.frame.columns}"
            )


@dataclass(frozen=True, eq=False)
class EntityFeatures:
    """Features aligned to an id space of N rows (see the module docstring for the index convention)."""

    categorical: dict[str, np.ndarray]  # name -> (N, M) int64 value indices
    values: dict[str, list[str]]  # name -> value names; index FIRST_VALUE + j is values[name][j]
    numeric: np.ndarray  # (N, F) float32, standardised; 0 where missing
    numeric_names: tuple[str, ...]
    known: np.ndarray  # (N,) bool: the entity had a row in the table

    @property
    def num_rows(self) -> int:
        return len(self.known)

    def cardinality(self, name: str) -> int:
        """Size of the index space of categorical feature `name` (padding and unknown included)."""
        return FIRST_VALUE + len(self.values[name])


def read_feature_table(spec: FeatureFile) -> FeatureTable:
    """Read `spec.path` with polars; every column as written (strings), numeric columns checked."""
    path = Path(spec.path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature file not found")
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
    else:
        sep = spec.sep or ("\t" if path.suffix in (".tsv", ".tab") else ",")
        frame = pl.read_csv(path, separator=sep, infer_schema=False, quote_char='"')
    table = FeatureTable(frame, spec.id_col, spec.categorical, spec.numeric, spec.multi_value_sep, str(path))
    for col in spec.numeric:  # fail on the first value that is not a number, naming it
        as_text = frame[col].cast(pl.String)
        bad = as_text.filter(as_text.is_not_null() & as_text.cast(pl.Float64, strict=False).is_null())
        if len(bad):
            raise ValueError(f"{path}: column {col!r} must be numeric, got {bad[0]!r}")
    return table


def align_features(table: FeatureTable, keys: Sequence[str | None]) -> EntityFeatures:
    """Align `table` to the id space whose row i has external id keys[i] (None: a special id, no features)."""
    frame = table.frame.with_columns(pl.col(table.id_col).cast(pl.String))
    dup = frame[table.id_col].filter(frame[table.id_col].is_duplicated())
    if len(dup):
        raise ValueError(f"{table.source}: id {dup[0]!r} appears more than once in column {table.id_col!r}")
    row_of = {k: i for i, k in enumerate(keys) if k is not None}
    ids = frame[table.id_col].to_list()
    rows = np.array([row_of.get(k, -1) for k in ids], dtype=np.int64)  # (T,) target row per table row
    n_extra = int((rows < 0).sum())
    keep = rows >= 0
    N = len(keys)
    known = np.zeros(N, dtype=bool)
    known[rows[keep]] = True
    n_missing = sum(k is not None for k in keys) - int(known.sum())
    if n_extra or n_missing:
        log.warning(
            "%s: %d ids of the data have no feature row (they get the 'unknown' value); %d table ids are not "
            "in the data (ignored)", table.source, n_missing, n_extra,
        )  # fmt: skip

    categorical, values = {}, {}
    for col in table.categorical:
        cells = frame[col].cast(pl.String).to_list()
        split = [
            [] if c is None or c == "" else (c.split(table.multi_value_sep) if table.multi_value_sep else [c])
            for c in cells
        ]
        vocab = sorted({v for vs in split for v in vs})
        index = {v: FIRST_VALUE + j for j, v in enumerate(vocab)}
        width = max(1, max((len(vs) for vs in split), default=1))
        out = np.full((N, width), PAD, dtype=np.int64)  # (N, M)
        out[:, 0] = UNKNOWN  # no row, or an empty cell: one explicit "unknown" value
        for r, vs in zip(rows, split):
            if r >= 0 and vs:
                out[r, : len(vs)] = [index[v] for v in vs]
                out[r, len(vs) :] = PAD
        categorical[col], values[col] = out, vocab

    numeric = np.zeros((N, len(table.numeric)), dtype=np.float32)  # (N, F)
    for j, col in enumerate(table.numeric):
        x = frame[col].cast(pl.Float64, strict=False).to_numpy()[keep]  # (T',) NaN where missing
        have = ~np.isnan(x)
        if have.any():
            mu, sd = x[have].mean(), x[have].std()
            numeric[rows[keep][have], j] = (x[have] - mu) / (sd if sd > 0 else 1.0)
    return EntityFeatures(categorical, values, numeric, tuple(table.numeric), known)
