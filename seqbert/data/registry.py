"""The one table of named interaction datasets: where the log lives, how to read it, where item names are.

`seqbert data prepare NAME`, `seqbert train` (`data: {name: NAME}`) and the Python API all read this table.
Item names are optional metadata for people (titles in recommendations); they never enter a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from seqbert.data import interactions as inter
from seqbert.data.features import FeatureTable
from seqbert.data.sources import resolve_data_dir


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: item-name file not found")
    return path.read_text(encoding=encoding).splitlines()


def _movielens_titles(path: Path, sep: str) -> dict[str, str]:
    """`id{sep}title{sep}...` lines (GroupLens movies.dat / u.item, latin-1) -> {movie id: title}."""
    return {parts[0]: parts[1] for line in _read_lines(path, "latin-1") if len(parts := line.split(sep)) >= 2}


def ml1m_titles(data_dir: Path) -> dict[str, str]:
    """SASRec ML-1M item id -> title, through `sas_to_original_items.txt` (`sas_id movie_id`) and
    `movies.dat` (the SASRec file renumbers the GroupLens movie ids)."""
    titles = _movielens_titles(data_dir / "ml-1m" / "movies.dat", "::")
    mapping = (line.split() for line in _read_lines(data_dir / "ml-1m" / "sas_to_original_items.txt"))
    return {sas: titles[movie] for sas, movie in mapping if movie in titles}


def _sas_mapping(path: Path) -> pl.DataFrame:
    """`sas_id original_id` lines -> frame (sas, original), both strings."""
    pairs = [line.split() for line in _read_lines(path)]
    return pl.DataFrame({"sas": [p[0] for p in pairs], "original": [p[1] for p in pairs]})


def ml1m_item_features(data_dir: Path) -> FeatureTable:
    """SASRec ML-1M item id -> genres (multi-valued, "|") and release year (numeric, from the title)."""
    rows = [line.split("::") for line in _read_lines(data_dir / "ml-1m" / "movies.dat", "latin-1")]
    movies = pl.DataFrame(
        {"original": [r[0] for r in rows], "genres": [r[2] for r in rows], "title": [r[1] for r in rows]}
    ).with_columns(year=pl.col("title").str.extract(r"\((\d{4})\)\s*$").cast(pl.Float64))
    frame = _sas_mapping(data_dir / "ml-1m" / "sas_to_original_items.txt").join(movies, on="original")
    return FeatureTable(
        frame.rename({"sas": "item"}), "item", ("genres",), ("year",), "|", "ml-1m movies.dat"
    )


def ml1m_user_features(data_dir: Path) -> FeatureTable:
    """SASRec ML-1M user id -> gender, age group, occupation (categorical, GroupLens users.dat)."""
    rows = [line.split("::") for line in _read_lines(data_dir / "ml-1m" / "users.dat", "latin-1")]
    users = pl.DataFrame(
        {k: [r[i] for r in rows] for i, k in enumerate(("original", "gender", "age", "occupation"))}
    )
    frame = _sas_mapping(data_dir / "ml-1m" / "sas_to_original_users.txt").join(users, on="original")
    return FeatureTable(
        frame.rename({"sas": "user"}), "user", ("gender", "age", "occupation"), (), None, "ml-1m users.dat"
    )


@dataclass(frozen=True)
class NamedDataset:
    source: str  # the `seqbert.data.sources.SOURCES` entry that holds the interactions
    scan: Callable[[Path], pl.LazyFrame]  # file -> standard lazy frame (user, item, timestamp, ...)
    item_names: Callable[[Path], dict[str, str]] | None = None  # data dir -> {item id: name}
    item_features: Callable[[Path], FeatureTable] | None = None  # data dir -> side features of the items
    user_features: Callable[[Path], FeatureTable] | None = None  # data dir -> side features of the users


DATASETS: dict[str, NamedDataset] = {
    "ml-1m": NamedDataset("ml-1m", inter.scan_pairs, ml1m_titles, ml1m_item_features, ml1m_user_features),
    "ml-1m-raw": NamedDataset(
        "ml-1m-raw", inter.scan_grouplens_dat, lambda d: _movielens_titles(d / "ml-1m" / "movies.dat", "::")
    ),
    "ml-100k": NamedDataset(
        "ml-100k", inter.scan_udata, lambda d: _movielens_titles(d / "ml-100k" / "raw" / "u.item", "|")
    ),
    "beauty": NamedDataset("beauty", inter.scan_pairs),
}


def get_dataset(name: str) -> NamedDataset:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]


def named_item_names(name: str, data_dir: str | Path | None) -> dict[str, str] | None:
    """Item names of a named dataset, or None when it has none or its name files are not in the data dir."""
    dataset = get_dataset(name)
    if dataset.item_names is None:
        return None
    try:
        return dataset.item_names(resolve_data_dir(data_dir))
    except FileNotFoundError:
        return None


def read_item_names(path: str | Path, id_col: str, name_col: str, sep: str | None = None) -> dict[str, str]:
    """A CSV/TSV (header row) or parquet file of item metadata -> {item id: name}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: item-name file not found")
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
    else:
        sep = sep or ("\t" if path.suffix in (".tsv", ".tab") else ",")
        frame = pl.read_csv(path, separator=sep, infer_schema=False, quote_char='"')
    missing = [c for c in (id_col, name_col) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: unknown column(s) {missing}; the file has columns {frame.columns}")
    frame = frame.select(pl.col(id_col).cast(pl.String), pl.col(name_col).cast(pl.String)).drop_nulls()
    return dict(zip(frame[id_col].to_list(), frame[name_col].to_list()))
