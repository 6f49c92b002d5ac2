"""The short Python surface for recommenders, the one owner of the saved-model format, and `seqbert recommend`.

    from seqbert import Recommender

    rec = Recommender(objective="next_item", max_seconds=600).fit(log, user_col="user_id", item_col="movie_id")
    rec.recommend(users=["42"], k=10)                        # polars frame: user, item, rank, score
    rec.recommend(histories={"me": ["1193", "661"]}, k=10)   # any history: new users work
    rec.save("my-model"); rec = Recommender.load("my-model")

A saved model is one directory: `model.safetensors` + `model.json` (format, BERT and task configs) +
`vocab.json` (+ `item_names.json` when names are known). `seqbert recommend RUN_DIR --all-users` writes
top-K for every user of a run's data, in user chunks (memory: one chunk x the catalogue), to parquet, CSV
or TREC, with the held-out targets as qrels that `seqbert evaluate` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from seqbert.config import ConfigError, build_config, config_to_dict, load_config
from seqbert.data import interactions as inter
from seqbert.data.vocab import NO_TARGET, ItemVocab
from seqbert.model.bert import BertConfig
from seqbert.tasks.bert4rec import RecConfig, SeqRecommender, score_histories
from seqbert.tasks.catalogue import topk_histories
from seqbert.training.checkpoint import CheckpointError, atomic_file, load_model_state, save_model

MODEL_FORMAT = "seqbert.recommender"
NAMES_FILE = "item_names.json"
RUN_FORMATS = (".parquet", ".csv", ".tsv", ".trec", ".run", ".txt")


def format_item(item: str, names: Mapping[str, str] | None) -> str:
    """`id` or `id (name)` for people."""
    return f"{item} ({names[item]})" if names and item in names else item


# ------------------------------------------------------------------------------------- saved-model format


def save_recommender(
    directory: str | Path,
    model: SeqRecommender,
    vocab: ItemVocab,
    item_names: Mapping[str, str] | None = None,
) -> Path:
    """Write a servable model directory (each file atomically)."""
    directory = Path(directory)
    meta = {
        "format": MODEL_FORMAT,
        "bert": dataclasses.asdict(model.config),
        "task": dataclasses.asdict(model.rec_config),
    }
    save_model(directory, model, meta)
    vocab.save(directory / "vocab.json")
    if item_names:
        known = {item: item_names[item] for item in vocab.items if item in item_names}
        with atomic_file(directory / NAMES_FILE) as tmp:
            tmp.write_text(json.dumps(known, ensure_ascii=False) + "\n")
    return directory


def load_recommender(directory: str | Path) -> tuple[SeqRecommender, ItemVocab, dict[str, str] | None]:
    """(model in eval mode, vocabulary, item names or None) from a model directory or a run directory."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such model or run directory")
    if (directory / "model").is_dir():  # a run directory
        directory = directory / "model"
    state, meta = load_model_state(directory)
    if meta.get("format") not in (MODEL_FORMAT, None) or not {"bert", "task"} <= set(meta):
        raise CheckpointError(f"{directory / 'model.json'}: not a seqbert recommender (no bert/task configs)")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{directory / 'model.safetensors'}: tensor {name!r} holds NaN/Inf values")
    task = dict(meta["task"])
    task["replace_probs"] = tuple(task["replace_probs"])
    task.pop("loss_norm", None)  # a knob of models saved before it was removed
    model = SeqRecommender(BertConfig(**meta["bert"]), RecConfig(**task))
    model.load_state_dict(state)
    model.eval()
    names_path = directory / NAMES_FILE
    names = json.loads(names_path.read_text()) if names_path.exists() else None
    return model, ItemVocab.load(directory / "vocab.json"), names


# ------------------------------------------------------------------------------------------ the Python API


def _job_config(config: Any, settings: Mapping[str, Any]):
    """A RecommendJob from a RecommendJob, a YAML path or None (SASRec+ defaults), with settings applied by
    field name (`max_seconds=600` sets train.max_seconds; a dotted `"train.lr"` key works too)."""
    from seqbert.jobs.recommend import RecommendJob, default_config

    if config is None:
        config = default_config()
    elif isinstance(config, (str, Path)):
        config = load_config(RecommendJob, config, ignore=("job",))
    data = config_to_dict(config)
    sections = {f.name for f in dataclasses.fields(RecommendJob) if isinstance(data[f.name], dict)}
    for key, value in settings.items():
        if "." in key:
            section, name = key.split(".", 1)
        elif key in data and key not in sections:
            section, name = None, key
        else:
            owners = [s for s in sorted(sections) if key in data[s]]
            if len(owners) != 1:
                raise ConfigError(
                    f"Recommender: setting {key!r} is {'ambiguous in' if owners else 'not a field of'} "
                    f"{owners or sorted(sections)}; use 'section.{key}'"
                )
            section, name = owners[0], key
        target = data if section is None else data.setdefault(section, {})
        if name not in target and section is not None and section not in sections:
            raise ConfigError(f"Recommender: unknown section {section!r}")
        target[name] = value
    return build_config(RecommendJob, data, "Recommender")


class Recommender:
    """BERT4Rec / SASRec+ with RecTools' and HF's shape: fit, recommend, save, load.

    `Recommender(config=None, **settings)`: config is a RecommendJob, a YAML path, or None for the SASRec+
    defaults (`seqbert.jobs.recommend.default_config`); settings override fields by name.
    """

    def __init__(self, config: Any = None, **settings: Any) -> None:
        self.config = _job_config(config, settings)
        self.model: SeqRecommender | None = None
        self.vocab: ItemVocab | None = None
        self.item_names: dict[str, str] | None = None
        self.histories: dict[str, np.ndarray] = {}  # external user id -> internal item ids, oldest first
        self.run_dir: Path | None = None

    @classmethod
    def from_parts(
        cls,
        model: SeqRecommender,
        vocab: ItemVocab,
        item_names: Mapping[str, str] | None = None,
        histories: Mapping[str, np.ndarray] | None = None,
    ) -> Recommender:
        rec = cls.__new__(cls)
        rec.config, rec.model, rec.vocab, rec.run_dir = None, model, vocab, None
        rec.item_names = dict(item_names) if item_names else None
        rec.histories = dict(histories or {})
        return rec

    def fit(
        self,
        interactions: Any,
        user_col: str = "user",
        item_col: str = "item",
        time_col: str | None = None,
        out: str | Path | None = None,
    ) -> Recommender:
        """Train on a polars or pandas frame of (user, item[, time]) rows; the run goes to `out` (a fresh
        temporary directory by default), exactly as `seqbert train` would write it."""
        from seqbert.jobs import run_config

        columns = [c for c in (user_col, item_col, time_col) if c is not None]
        missing = [c for c in columns if c not in interactions.columns]
        if missing:
            raise ValueError(f"fit: unknown column(s) {missing}; the frame has {list(interactions.columns)}")
        if isinstance(interactions, pl.DataFrame):
            frame = interactions.select(columns)
        else:  # pandas, column by column (pl.from_pandas needs pyarrow for object columns)
            frame = pl.DataFrame({c: interactions[c].tolist() for c in columns})
        out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="seqbert-fit-"))
        out.mkdir(parents=True, exist_ok=True)
        source = out / "interactions.parquet"
        frame.write_parquet(source)
        data = dataclasses.replace(
            self.config.data, name=None, prepared=None, interactions=str(source),
            user_col=user_col, item_col=item_col, time_col=time_col,
        )  # fmt: skip
        self.config = dataclasses.replace(self.config, data=data)
        run_config("recommend", self.config, out)
        loaded = Recommender.load(out)
        self.model, self.vocab, self.item_names, self.histories = (
            loaded.model, loaded.vocab, loaded.item_names, loaded.histories,
        )  # fmt: skip
        self.run_dir = out
        return self

    def _require_model(self) -> SeqRecommender:
        if self.model is None:
            raise ValueError("this Recommender is not fitted: call fit() or Recommender.load()")
        return self.model

    @torch.no_grad()
    def score_histories(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, V) catalogue scores for histories of internal ids (specials at -inf)."""
        return score_histories(self._require_model(), histories)

    def encode_history(self, items: Sequence[str], skip_unknown: bool = False) -> np.ndarray:
        unknown = [item for item in items if item not in self.vocab]
        if unknown and not skip_unknown:
            raise KeyError(
                f"unknown item ids {unknown[:10]} (not in the training vocabulary); pass skip_unknown=True "
                "(--skip-unknown) to drop them"
            )
        return self.vocab.encode_many([item for item in items if item in self.vocab])

    @torch.no_grad()
    def topk(
        self, histories: Sequence[np.ndarray], k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids (B, k) internal, scores (B, k)) with seen items (exclude_seen) and specials removed;
        -1 / -inf where fewer than k items remain. Chunked over users (1,024 at a time) and over the catalogue
        (`topk_over_catalogue`): at most (1,024, 2,048) scores exist at once, whatever the sizes; ties go to
        the lower id."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        model = self._require_model()
        if model.rec_config.objective == "next_item" and any(len(h) == 0 for h in histories):
            raise ValueError("a next_item model needs at least one known item in every history")
        scores, ids = topk_histories(
            model, histories, k, exclude_seen, batch_size=max(1, min(len(histories), 1024))
        )
        return ids.cpu().numpy(), scores.float().cpu().numpy()

    def recommend(
        self,
        users: Sequence[str] | None = None,
        histories: Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        skip_unknown: bool = False,
    ) -> pl.DataFrame:
        """Top-k for known `users` (their whole history) or for any `histories` (external item ids, oldest
        first; a mapping's keys name the rows, a list's rows are 0, 1, ...). Returns a polars frame
        `user, item, rank, score` (+ `name` when item names are known) in the caller's ids."""
        if (users is None) == (histories is None):
            raise ValueError("recommend: pass exactly one of users= or histories=")
        self._require_model()
        if users is not None:
            unknown = [u for u in users if str(u) not in self.histories]
            if unknown:
                raise KeyError(f"unknown users {unknown[:10]}; pass their items as histories= instead")
            keys = [str(u) for u in users]
            encoded = [self.histories[u] for u in keys]
        else:
            pairs = histories.items() if isinstance(histories, Mapping) else enumerate(histories)
            keys, raw = zip(*pairs) if len(histories) else ((), ())
            keys = [str(key) for key in keys]
            encoded = [self.encode_history([str(i) for i in h], skip_unknown) for h in raw]
        ids, scores = (
            self.topk(encoded, k, exclude_seen) if keys else (np.zeros((0, k), int), np.zeros((0, k)))
        )
        return self._frame(keys, ids, scores)

    def _frame(self, keys: Sequence[str], ids: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
        keep = ids >= 0  # (B, k)
        ranks = np.cumsum(keep, axis=1)
        frame = pl.DataFrame(
            {
                "user": np.repeat(np.asarray(keys, dtype=object), keep.sum(1)).astype(str),
                "item": self.vocab.decode_many(ids[keep].tolist()),
                "rank": ranks[keep].astype(np.int64),
                "score": scores[keep].astype(np.float64),
            },
            schema={"user": pl.String, "item": pl.String, "rank": pl.Int64, "score": pl.Float64},
        )
        if self.item_names:
            frame = frame.with_columns(name=pl.col("item").replace_strict(self.item_names, default=None))
        return frame

    def save(self, directory: str | Path) -> Path:
        return save_recommender(directory, self._require_model(), self.vocab, self.item_names)

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        """A model directory, or a run directory (then its users' histories come along for users=)."""
        model, vocab, names = load_recommender(directory)
        histories = {}
        dataset = run_dataset(directory)
        if dataset is not None:
            histories = dict(zip(dataset.users, full_histories(dataset)))
        rec = cls.from_parts(model, vocab, names, histories)
        rec.run_dir = Path(directory) if dataset is not None else None
        return rec


# ------------------------------------------------------------------------------------ batch recommendations


def run_dataset(run_dir: str | Path) -> inter.SequenceDataset | None:
    """The prepared data of a `seqbert train` run directory (OUT/data, or the `prepared:` directory it
    names), or None for a bare model directory."""
    run_dir = Path(run_dir)
    if (run_dir / "data" / inter.STATS_FILE).exists():
        return inter.load_prepared(run_dir / "data")
    run_json = run_dir / "run.json"
    if run_json.exists():
        prepared = (json.loads(run_json.read_text()).get("data") or {}).get("prepared")
        if prepared:
            return inter.load_prepared(prepared)
    return None


def full_histories(ds: inter.SequenceDataset) -> list[np.ndarray]:
    """Every user's whole history (train + validation + test item): the input for serving."""
    return [h if t == NO_TARGET else np.append(h, t) for h, t in zip(ds.test_inputs(), ds.test_targets)]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: expected 0 <= I < N")
    return index, count


def _write_rows(frame: pl.DataFrame, path: Path, suffix: str, part: Path | None, first: bool) -> None:
    """Append one chunk: text formats to `path`, parquet as one part file (combined at the end)."""
    if part is not None:
        frame.write_parquet(part)
        return
    with path.open("a" if not first else "w") as f:
        if suffix in (".csv", ".tsv"):
            f.write(frame.select("user", "item", "rank", "score").write_csv(
                separator="," if suffix == ".csv" else "\t", include_header=first))  # fmt: skip
        else:  # TREC run: qid Q0 docno rank score tag
            f.writelines(
                f"{u} Q0 {i} {r} {s:.6f} seqbert\n"
                for u, i, r, s in zip(frame["user"], frame["item"], frame["rank"], frame["score"])
            )


def write_recommendations(
    run_dir: str | Path,
    out: str | Path,
    split: str = "test",
    k: int = 10,
    qrels_out: str | Path | None = None,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 512,
    exclude_seen: bool = True,
    progress: bool = True,
) -> int:
    """Top-k for every user of a run's data (this shard of them) to `out`; returns the number of users.

    split "test": each user's input before the held-out test item (the users that have one), so the file
    evaluates against `qrels_out` exactly as the run's metrics.json full protocol; "full": every user's
    whole history, for serving. Users are processed in chunks of `batch_size`, written as they go.
    """
    if split not in ("test", "full"):
        raise ValueError(f"--split must be 'test' or 'full', got {split!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size!r}")
    out = Path(out)
    if out.suffix not in RUN_FORMATS:
        raise ValueError(f"--out {out}: expected a file ending in one of {RUN_FORMATS}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory, expected a file")
    rec = Recommender.load(run_dir)
    ds = run_dataset(run_dir)
    if ds is None:
        raise FileNotFoundError(
            f"{run_dir}: no prepared data (OUT/data); --all-users needs a `seqbert train` run directory"
        )
    if split == "test":
        users = np.flatnonzero(ds.test_targets != NO_TARGET)
        inputs = ds.test_inputs()
    else:
        users = np.arange(ds.num_users)
        inputs = full_histories(ds)
    if rec.model.rec_config.objective == "next_item":
        users = users[[len(inputs[u]) > 0 for u in users]]
    users = np.array_split(users, shard[1])[shard[0]]
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(prefix=".parts-", dir=out.parent)) if out.suffix == ".parquet" else None
    tmp_text = out.with_name(f".{out.name}.tmp")
    try:
        for n, start in enumerate(
            tqdm(range(0, len(users), batch_size), desc="recommend", disable=not progress)
        ):
            rows = users[start : start + batch_size]
            ids, scores = rec.topk([inputs[u] for u in rows], k, exclude_seen)
            frame = rec._frame([ds.users[u] for u in rows], ids, scores)
            _write_rows(
                frame, tmp_text, out.suffix, None if parts is None else parts / f"{n:06d}.parquet", n == 0
            )
        if parts is not None:
            files = sorted(parts.glob("*.parquet"))
            if files:
                pl.scan_parquet(files).sink_parquet(tmp_text)
            else:
                rec._frame([], np.zeros((0, k), int), np.zeros((0, k))).write_parquet(tmp_text)
        elif not len(users):
            tmp_text.write_text("user,item,rank,score\n" if out.suffix in (".csv", ".tsv") else "")
        tmp_text.replace(out)
    finally:
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)
        tmp_text.unlink(missing_ok=True)
    if qrels_out is not None and split == "test":
        qrels_out = Path(qrels_out)
        with atomic_file(qrels_out) as tmp:
            tmp.write_text(
                "".join(f"{ds.users[u]} 0 {ds.vocab.decode(int(ds.test_targets[u]))} 1\n" for u in users)
            )
    elif qrels_out is not None:
        raise ValueError("--qrels-out needs --split test (the full split has no held-out items)")
    return len(users)


# ------------------------------------------------------------------------------------------------- the CLI


def add_recommend_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recommend", help="top-k next items for an item history, or for every user of a run (--all-users)"
    )
    p.add_argument("run_dir", help="a run directory written by `seqbert train` (or its model/ folder)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--items", nargs="+", help="a history, oldest first (external item ids)")
    who.add_argument("--all-users", action="store_true", help="every user of the run's data; needs --out")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="allow items of the history in the results")
    p.add_argument("--skip-unknown", action="store_true", help="drop history items the model has never seen")
    p.add_argument("--split", choices=("test", "full"), default="test",
                   help="--all-users: test = input before the held-out item; full = whole history (serving)")  # fmt: skip
    p.add_argument("--out", help="--all-users: output file (.parquet, .csv, .tsv, or TREC .trec/.run/.txt)")
    p.add_argument("--qrels-out", help="--all-users --split test: write the held-out items as TREC qrels")
    p.add_argument("--shard", default="0/1", help="I/N: only the I-th of N equal parts of the users")
    p.add_argument("--batch-size", type=int, default=512, help="users per chunk")
    p.set_defaults(func=run_recommend)


def run_recommend(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.all_users:
        if not args.out:
            raise ValueError("--all-users needs --out FILE")
        n = write_recommendations(
            args.run_dir, args.out, args.split, args.k, args.qrels_out, parse_shard(args.shard),
            args.batch_size, exclude_seen=not args.include_seen,
        )  # fmt: skip
        print(f"wrote top-{args.k} for {n:,} users to {args.out}", file=sys.stderr)
        return 0
    if args.out or args.qrels_out:
        raise ValueError("--out/--qrels-out go with --all-users")
    rec = Recommender.load(args.run_dir)
    frame = rec.recommend(
        histories=[args.items], k=args.k, exclude_seen=not args.include_seen, skip_unknown=args.skip_unknown
    )
    for row in frame.iter_rows(named=True):
        line = {"rank": row["rank"], "item": row["item"], "score": round(row["score"], 6)}
        if row.get("name") is not None:
            line["name"] = row["name"]
        sys.stdout.write(json.dumps(line) + "\n")
    return 0
