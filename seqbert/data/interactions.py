"""Interaction logs -> chronological item sequences -> an explicit train/valid/test split.

Data flows top to bottom:

1. `scan_*` readers: a file -> a polars LazyFrame with the standard columns
       user: str, item: str, timestamp: i64 | null, rating: f64 | null, line: i64, _error: str | null
   `line` is the 1-based line (or row) number in the file. It is the tie-break for equal timestamps and the
   only time order of files without timestamps (SASRec/BERT4Rec `user item` files are chronological per
   user). `_error` describes a malformed row. Nothing is read until `collect_interactions`.
2. `collect_interactions(lf, source, config)`: collect only the needed columns (streaming, so the raw log
   may be larger than memory; the filtered interactions must fit), raise on the first malformed row with
   file and line, then filter: rating threshold, duplicates, iterative k-core.
3. `to_sequences(df)`: per user, items sorted by (timestamp, line), as internal ids of an `ItemVocab`.
4. `leave_one_out(seqs)` or `temporal_split(seqs, cutoff)`: a `SequenceDataset` (see its docstring for
   exactly which items each stage may see).

Duplicates: rows with the same (user, item, timestamp) are one event logged twice; only the first line is
kept. Without timestamps nothing is dropped: a repeated item is a repeated consumption at a later position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from seqbert.data.sources import sha256_file
from seqbert.data.vocab import FIRST_ITEM_ID, NO_TARGET, ItemVocab

_STANDARD = ("user", "item", "timestamp", "rating", "line", "_error")


# ---------------------------------------------------------------- readers (lazy, nothing is read here)


def _delimited(path: Path, sep: str, fields: tuple[str, ...], whitespace: bool = False) -> pl.LazyFrame:
    """One record per line, `len(fields)` fields separated by `sep`; user and item must be integers."""
    raw = pl.col("raw").str.strip_chars()
    if whitespace:  # `user item` files: accept any run of spaces/tabs, as `str.split()` would
        raw = raw.str.replace_all(r"\s+", " ")
    lf = pl.scan_lines(path, name="raw", row_index_name="__line", row_index_offset=1)
    lf = lf.with_columns(raw=raw).filter(pl.col("raw") != "")  # blank lines carry no event: skipped
    lf = lf.with_columns(_parts=pl.col("raw").str.split(sep))
    lf = lf.with_columns(
        [pl.col("_parts").list.get(i, null_on_oob=True).alias(f"_{f}") for i, f in enumerate(fields)]
    )
    n = len(fields)
    count = pl.col("_parts").list.len()
    expected = f"expected {n} fields ({', '.join(fields)}) separated by {sep!r}, got {{}}"
    checks = [(count != n, pl.format(expected, count))]
    for f in fields:
        kind = pl.Float64 if f == "rating" else pl.Int64
        bad = pl.col(f"_{f}").cast(kind, strict=False).is_null()
        what = "a number" if f == "rating" else "an integer"
        checks.append((bad, pl.format(f"{f} must be {what}, got {{}}", pl.col(f"_{f}"))))
    return _standardize(lf, fields, checks)


def _standardize(lf: pl.LazyFrame, fields: tuple[str, ...], checks: list) -> pl.LazyFrame:
    error = pl.lit(None, dtype=pl.String)
    for bad, message in reversed(checks):  # the first failing check wins
        error = pl.when(bad).then(message).otherwise(error)
    present = set(fields)
    return lf.select(
        user=pl.col("_user"),
        item=pl.col("_item"),
        timestamp=_to_epoch(pl.col("_timestamp")) if "timestamp" in present else pl.lit(None, pl.Int64),
        rating=pl.col("_rating").cast(pl.Float64, strict=False)
        if "rating" in present
        else pl.lit(None, pl.Float64),
        line=pl.col("__line").cast(pl.Int64),
        _error=error,
    )


def _to_epoch(col: pl.Expr) -> pl.Expr:
    """Integer timestamps as they are; else ISO-8601 date-times as epoch seconds; else null (an error)."""
    return pl.coalesce(
        col.cast(pl.Int64, strict=False),
        col.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False),
        col.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s"),
    )


def scan_pairs(path: str | Path) -> pl.LazyFrame:
    """SASRec/BERT4Rec `user item` per line (`ml-1m.txt`, `beauty.txt`); line order = time order."""
    return _delimited(Path(path), " ", ("user", "item"), whitespace=True)


def scan_grouplens_dat(path: str | Path) -> pl.LazyFrame:
    """GroupLens ML-1M/10M `ratings.dat`: `user::item::rating::timestamp`."""
    return _delimited(Path(path), "::", ("user", "item", "rating", "timestamp"))


def scan_udata(path: str | Path) -> pl.LazyFrame:
    """GroupLens ML-100K `u.data`: `user \\t item \\t rating \\t timestamp`, unsorted."""
    return _delimited(Path(path), "\t", ("user", "item", "rating", "timestamp"))


def scan_table(
    path: str | Path,
    user_col: str,
    item_col: str,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str = ",",
) -> pl.LazyFrame:
    """CSV/TSV with a header row, or parquet (by suffix), with named columns.

    Timestamps may be integers (epoch) or ISO-8601 date-times. `line` is the file line for CSV (header = 1)
    and the 1-based row number for parquet.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: interaction file not found")
    if path.suffix == ".parquet":
        lf = pl.scan_parquet(path).with_row_index("__line", offset=1)
    else:  # every column as text: we cast and report errors ourselves, with the line number
        lf = pl.scan_csv(path, separator=sep, infer_schema=False, row_index_name="__line", row_index_offset=2)
    try:
        names = [n for n in lf.collect_schema().names() if n != "__line"]
    except pl.exceptions.PolarsError as e:
        raise ValueError(f"{path}: could not read the header ({e})") from e
    wanted = {"user": user_col, "item": item_col, "timestamp": time_col, "rating": rating_col}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    missing = [v for v in wanted.values() if v not in names]
    if missing:
        raise ValueError(
            f"{path}: unknown column(s) {missing}; the file has columns {names} (separator {sep!r})"
        )
    lf = lf.with_columns([pl.col(v).cast(pl.String).alias(f"_{k}") for k, v in wanted.items()])
    empty = lambda c: pl.col(c).is_null() | (pl.col(c) == "")  # noqa: E731
    checks = [
        (empty("_user"), pl.lit(f"empty {user_col!r}")),
        (empty("_item"), pl.lit(f"empty {item_col!r}")),
    ]
    if time_col is not None:
        bad = _to_epoch(pl.col("_timestamp")).is_null()
        message = f"{time_col!r} must be an integer or ISO date-time, got {{}}"
        checks.append((bad, pl.format(message, pl.col("_timestamp"))))
    if rating_col is not None:
        bad = pl.col("_rating").cast(pl.Float64, strict=False).is_null()
        checks.append((bad, pl.format(f"{rating_col!r} must be a number, got {{}}", pl.col("_rating"))))
    return _standardize(lf, tuple(wanted), checks)


# ---------------------------------------------------------------- collect + filter (eager from here on)


@dataclass(frozen=True)
class FilterConfig:
    """Which interactions to keep. k-core is iterative: removing users can push items below the bound."""

    min_rating: float | None = None  # keep rating >= min_rating (needs a rating column); None = keep all
    min_user_interactions: int = 0  # user side of the k-core; 0 or 1 = off
    min_item_interactions: int = 0  # item side of the k-core; 0 or 1 = off

    def __post_init__(self) -> None:
        for name in ("min_user_interactions", "min_item_interactions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"FilterConfig.{name} must be an int >= 0, got {value!r}")


def collect_interactions(
    lf: pl.LazyFrame, source: str | Path, config: FilterConfig | None = None
) -> pl.DataFrame:
    """Read, validate and filter a scanned log. Raises ValueError naming `source` and the first bad line."""
    config = config or FilterConfig()
    try:
        df = lf.select(_STANDARD).collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ValueError(f"{source}: could not read interactions ({e})") from e
    bad = df.filter(pl.col("_error").is_not_null()).sort("line").head(1)
    if bad.height:
        raise ValueError(f"{source}:{bad['line'][0]}: {bad['_error'][0]}")
    if df.height == 0:
        raise ValueError(f"{source}: no interactions (empty file?)")
    df = df.drop("_error").sort("line")
    if config.min_rating is not None:
        if df["rating"].null_count() == df.height:
            raise ValueError(
                f"{source}: min_rating={config.min_rating} needs a rating column; this log has none"
            )
        df = df.filter(pl.col("rating") >= config.min_rating)
    if df["timestamp"].null_count() < df.height:
        df = df.unique(subset=["user", "item", "timestamp"], keep="first", maintain_order=True)
    df = k_core(df, config.min_user_interactions, config.min_item_interactions)
    if df.height == 0:
        raise ValueError(f"{source}: no interactions left after filtering with {config}")
    return df


def k_core(df: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """Largest subset where every user has >= min_user rows and every item >= min_item (iterate to a fixpoint)."""
    while True:
        kept = df.filter((pl.len().over("user") >= min_user) & (pl.len().over("item") >= min_item))
        if kept.height == df.height:
            return kept
        df = kept


# ---------------------------------------------------------------- sequences and splits


@dataclass(frozen=True, eq=False)
class UserSequences:
    """Chronological item sequences, one per user; users in natural order of their external id."""

    users: list[str]
    items: list[np.ndarray]  # per user (n_u,) int64 internal ids, oldest first
    timestamps: list[np.ndarray] | None  # per user (n_u,) int64, or None when the log has no timestamps
    vocab: ItemVocab


def to_sequences(df: pl.DataFrame, vocab: ItemVocab | None = None) -> UserSequences:
    """Group a collected log by user; order each user's items by (timestamp, line). Vocab: from `df` if None."""
    vocab = vocab or ItemVocab.from_items(df["item"].unique().to_list())
    df = df.with_columns(
        item_id=pl.col("item").replace_strict(
            vocab.items, range(FIRST_ITEM_ID, vocab.size), return_dtype=pl.Int64
        )
    )
    numeric_users = df["user"].cast(pl.Int64, strict=False)
    user_key = numeric_users if numeric_users.null_count() == 0 else df["user"]
    df = df.with_columns(_user_key=user_key).sort(
        ["_user_key", "timestamp", "line"]
    )  # sort is total: line unique
    counts = df.group_by("_user_key", maintain_order=True).agg(pl.col("user").first(), n=pl.len())
    cuts = np.cumsum(counts["n"].to_numpy())[:-1]
    items = np.split(df["item_id"].to_numpy(), cuts)
    has_time = df["timestamp"].null_count() == 0
    times = np.split(df["timestamp"].to_numpy(), cuts) if has_time else None
    return UserSequences(counts["user"].to_list(), items, times, vocab)


@dataclass(frozen=True, eq=False)
class SequenceDataset:
    """A split with no leakage by construction. Row u is user `users[u]`.

    - `train_sequences[u]`: the items a model may train on (internal ids, oldest first).
    - `valid_targets[u]`: the item to predict at validation, or NO_TARGET (-1).
      Its input history is `valid_inputs()[u]` = `train_sequences[u]`.
    - `test_targets[u]`: the item to predict at test, or NO_TARGET.
      Its input history is `test_inputs()[u]` = `train_sequences[u]` + [valid_targets[u]] (the valid item
      is appended when there is one: at test time the validation interaction is in the past).

    Leave-one-out (n_u >= 3): train = s[:-2], valid = s[-2], test = s[-1]; users with n_u < 3 keep all
    items for training and have no targets (as SASRec's `data_partition`). Temporal: see `temporal_split`.
    """

    users: list[str]
    train_sequences: list[np.ndarray]  # per user (n_u,) int64
    valid_targets: np.ndarray  # (U,) int64, internal id or NO_TARGET
    test_targets: np.ndarray  # (U,) int64, internal id or NO_TARGET
    vocab: ItemVocab
    split: str  # "leave_one_out" or "temporal"

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("train_sequences", "valid_targets", "test_targets"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SequenceDataset.{name} has {len(getattr(self, name))} rows, users has {n}")
        if self.split not in ("leave_one_out", "temporal"):
            raise ValueError(
                f"SequenceDataset.split must be 'leave_one_out' or 'temporal', got {self.split!r}"
            )

    @property
    def num_users(self) -> int:
        return len(self.users)

    def valid_inputs(self) -> list[np.ndarray]:
        """History for predicting `valid_targets`: the train part only."""
        return list(self.train_sequences)

    def test_inputs(self) -> list[np.ndarray]:
        """History for predicting `test_targets`: the train part, then the validation item if any."""
        return [
            s if v == NO_TARGET else np.append(s, v) for s, v in zip(self.train_sequences, self.valid_targets)
        ]

    def num_interactions(self) -> int:
        n_train = sum(len(s) for s in self.train_sequences)
        return n_train + int((self.valid_targets != NO_TARGET).sum() + (self.test_targets != NO_TARGET).sum())


def leave_one_out(seqs: UserSequences) -> SequenceDataset:
    """Last item = test target, second-last = validation target, the rest = train (users with >= 3 items)."""
    train, valid, test = [], [], []
    for s in seqs.items:
        if len(s) < 3:
            train.append(s)
            valid.append(NO_TARGET)
            test.append(NO_TARGET)
        else:
            train.append(s[:-2])
            valid.append(s[-2])
            test.append(s[-1])
    as_ids = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return SequenceDataset(list(seqs.users), train, as_ids(valid), as_ids(test), seqs.vocab, "leave_one_out")


def quantile_cutoff(seqs: UserSequences, quantile: float) -> int:
    """The timestamp below which about `quantile` of all interactions lie (numpy's "higher" quantile)."""
    if seqs.timestamps is None:
        raise ValueError("quantile_cutoff needs timestamps; this log has none")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    return int(np.quantile(np.concatenate(seqs.timestamps), quantile, method="higher"))


def temporal_split(
    seqs: UserSequences, cutoff: int | None = None, quantile: float | None = None
) -> SequenceDataset:
    """Global time split at one cutoff (given, or the `quantile` of all timestamps).

    train = each user's interactions with timestamp < cutoff; test target = the user's first interaction at
    or after the cutoff (NO_TARGET if none). Users with nothing before the cutoff have no history and are
    dropped. There is no validation target (valid_targets are all NO_TARGET; split the train log again at
    an earlier cutoff to tune).
    """
    if seqs.timestamps is None:
        raise ValueError("temporal_split needs timestamps; this log has none (use leave_one_out)")
    if (cutoff is None) == (quantile is None):
        raise ValueError("temporal_split: give exactly one of cutoff and quantile")
    if quantile is not None:
        cutoff = quantile_cutoff(seqs, quantile)
    users, train, test = [], [], []
    for user, s, t in zip(seqs.users, seqs.items, seqs.timestamps):
        k = int(np.searchsorted(t, cutoff, side="left"))  # t is sorted: t[:k] < cutoff <= t[k:]
        if k == 0:
            continue
        users.append(user)
        train.append(s[:k])
        test.append(s[k] if k < len(s) else NO_TARGET)
    test_targets = np.asarray(test, dtype=np.int64)
    return SequenceDataset(
        users, train, np.full(len(users), NO_TARGET, np.int64), test_targets, seqs.vocab, "temporal"
    )


# ---------------------------------------------------------------- prepared datasets on disk

SEQUENCES_FILE = "sequences.parquet"
VOCAB_FILE = "vocab.json"
STATS_FILE = "stats.json"
_PREPARED_FORMAT = "seqbert.prepared_sequences"
_PREPARED_VERSION = 1


def repeat_rate(histories: list[np.ndarray], targets: np.ndarray) -> float:
    """Share of targets already in their input history: sum_u [t_u in h_u] / |{u: t_u != NO_TARGET}|.

    Under the strict seen-item protocol each such target is a certain miss, so above ~1 % the choice between
    `exclude_seen: strict` and `none` changes the figures (repeat consumption: music, groceries, news).
    """
    has = [(h, t) for h, t in zip(histories, targets) if t != NO_TARGET]
    if not has:
        return 0.0
    return sum(bool(np.any(np.asarray(h) == t)) for h, t in has) / len(has)


def dataset_stats(dataset: SequenceDataset) -> dict:
    """Counts over all kept interactions (train + valid + test targets); density = interactions / (U * I)."""
    lengths = np.array([len(s) for s in dataset.test_inputs()], dtype=np.int64)
    lengths = lengths + (dataset.test_targets != NO_TARGET)
    n = int(lengths.sum())
    empty = len(lengths) == 0
    return {
        "users": dataset.num_users,
        "items": dataset.vocab.num_items,
        "interactions": n,
        "density": n / max(1, dataset.num_users * dataset.vocab.num_items),
        "sequence_length": {
            "min": 0 if empty else int(lengths.min()),
            "max": 0 if empty else int(lengths.max()),
            "mean": 0.0 if empty else float(lengths.mean()),
            "median": 0.0 if empty else float(np.median(lengths)),
        },
        "valid_users": int((dataset.valid_targets != NO_TARGET).sum()),
        "test_users": int((dataset.test_targets != NO_TARGET).sum()),
        "repeat_rate": repeat_rate(dataset.test_inputs(), dataset.test_targets),
    }


def save_prepared(
    dataset: SequenceDataset,
    out_dir: str | Path,
    sources: list[Path] = (),
    extra: dict | None = None,  # type: ignore[assignment]
) -> dict:
    """Write sequences.parquet, vocab.json and stats.json (with sha256 of sources and of both files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {
            "user": pl.Series(dataset.users, dtype=pl.String),
            # equal-length arrays would become a fixed-size Array column: cast keeps the schema a List
            "train": pl.Series(dataset.train_sequences, dtype=pl.List(pl.Int64)).cast(pl.List(pl.Int64)),
            "valid_target": pl.Series(dataset.valid_targets, dtype=pl.Int64),
            "test_target": pl.Series(dataset.test_targets, dtype=pl.Int64),
        }
    )
    frame.write_parquet(out / SEQUENCES_FILE)
    dataset.vocab.save(out / VOCAB_FILE)
    stats = {
        "format": _PREPARED_FORMAT,
        "version": _PREPARED_VERSION,
        "split": dataset.split,
        **dataset_stats(dataset),
        "sources": [
            {"file": Path(p).name, "bytes": Path(p).stat().st_size, "sha256": sha256_file(p)} for p in sources
        ],
        "files": {name: sha256_file(out / name) for name in (SEQUENCES_FILE, VOCAB_FILE)},
        **(extra or {}),
    }
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def load_stats(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; is {prepared_dir} a prepared dataset (`seqbert data prepare`)?"
        )
    try:
        stats = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(stats, dict) or stats.get("format") != _PREPARED_FORMAT:
        raise ValueError(f"{path}: expected a JSON object with format={_PREPARED_FORMAT!r}")
    if stats.get("version") != _PREPARED_VERSION:
        raise ValueError(
            f"{path}: unsupported version {stats.get('version')!r}, expected {_PREPARED_VERSION}"
        )
    return stats


def load_prepared(prepared_dir: str | Path) -> SequenceDataset:
    """Load what `save_prepared` wrote; every file is checked (presence, sha256, schema, id ranges)."""
    root = Path(prepared_dir)
    stats = load_stats(root)
    for name in (SEQUENCES_FILE, VOCAB_FILE):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the prepared dataset")
        expected = stats.get("files", {}).get(name)
        if expected is not None and sha256_file(path) != expected:
            raise ValueError(f"{path}: sha256 differs from {STATS_FILE}; the file is corrupt or was modified")
    vocab = ItemVocab.load(root / VOCAB_FILE)
    path = root / SEQUENCES_FILE
    try:
        frame = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from e
    schema = {
        "user": pl.String,
        "train": pl.List(pl.Int64),
        "valid_target": pl.Int64,
        "test_target": pl.Int64,
    }
    if dict(frame.schema) != schema:
        raise ValueError(f"{path}: columns {dict(frame.schema)}, expected {schema}")
    if (
        frame.null_count().sum_horizontal()[0]
        or frame["train"].list.eval(pl.element().null_count()).explode().sum()
    ):
        raise ValueError(f"{path}: null values; expected complete sequences and targets")
    lengths = frame["train"].list.len().to_numpy()
    nonempty = frame["train"].filter(frame["train"].list.len() > 0)  # explode() turns [] into a null row
    flat = nonempty.explode().to_numpy() if len(nonempty) else np.zeros(0, np.int64)
    train = np.split(flat.astype(np.int64), np.cumsum(lengths)[:-1]) if len(lengths) else []
    valid, test = frame["valid_target"].to_numpy(), frame["test_target"].to_numpy()
    for name, ids, allowed in (
        ("train", flat, ()),
        ("valid_target", valid, (NO_TARGET,)),
        ("test_target", test, (NO_TARGET,)),
    ):
        wrong = ~((ids >= FIRST_ITEM_ID) & (ids < vocab.size)) & ~np.isin(ids, allowed)
        if wrong.any():
            raise ValueError(
                f"{path}: column {name!r} has id {ids[wrong][0]} outside the items of {VOCAB_FILE} "
                f"({FIRST_ITEM_ID}..{vocab.size - 1})"
            )
    dataset = SequenceDataset(frame["user"].to_list(), train, valid, test, vocab, stats.get("split", ""))
    if dataset.num_users != stats.get("users") or dataset.vocab.num_items != stats.get("items"):
        raise ValueError(
            f"{root / STATS_FILE}: users/items ({stats.get('users')}, {stats.get('items')}) do not match "
            f"the data ({dataset.num_users}, {dataset.vocab.num_items})"
        )
    return dataset
