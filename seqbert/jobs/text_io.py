"""What the text jobs share: where a configured data path points, writing `OUT/metrics.json`, and the two
files that pass query-level facts between the `text_pipeline` and `rerank` jobs:

  candidates  {"dataset", "split", "source", "depth", "lists": {query id: [doc id, ...] best first}}: a
              first stage's lists over a split (`text_pipeline` `export_candidates`), from which `rerank`
              mines hard negatives (`negatives_from`), so the cross-encoder trains on what it will rerank
  trained     {"dataset", "split", "query_ids": [...]}: `OUT/hf/trained_queries.json` of a `rerank` run,
              the queries whose labels the cross-encoder saw; `text_pipeline` refuses to tune or report
              on any of them
"""

from __future__ import annotations

import json
from pathlib import Path

from seqbert.data.sources import resolve_data_dir
from seqbert.training.checkpoint import atomic_file


def data_path(data_dir: str | None, path: str) -> Path:
    """An absolute path as given; a relative one under the data directory (--data-dir or
    $SEQBERT_DATA_DIR), which must exist."""
    p = Path(path)
    if p.is_absolute():
        return p
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    return root / p


def write_metrics(out: Path, summary: dict) -> dict:
    """Write the job's summary to `out/metrics.json` (atomically) and return it."""
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


TRAINED_QUERIES = "trained_queries.json"


def _write_json(path: Path, obj: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj) + "\n")


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg})") from e
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise ValueError(f"{path}: expected an object with keys {list(keys)}, missing {missing}")
    return obj


def write_candidates(path: Path, dataset: str, split: str, source: str, lists: dict[str, list[str]]) -> None:
    depth = max((len(v) for v in lists.values()), default=0)
    _write_json(path, {"dataset": dataset, "split": split, "source": source, "depth": depth, "lists": lists})


def read_candidates(path: Path, dataset: str, split: str) -> dict:
    """A candidates file, checked to be about `dataset`'s `split` (negatives mined from another split's
    lists would pair queries with the wrong judgements)."""
    obj = _read_json(path, ("dataset", "split", "source", "depth", "lists"))
    if (obj["dataset"], obj["split"]) != (dataset, split):
        raise ValueError(f"{path}: candidates of {obj['dataset']}/{obj['split']}, expected {dataset}/{split}")
    return obj


def write_trained_queries(model_dir: Path, dataset: str, split: str, qids: list[str]) -> None:
    _write_json(model_dir / TRAINED_QUERIES, {"dataset": dataset, "split": split, "query_ids": qids})


def read_trained_queries(model_dir: str | Path) -> dict | None:
    """The trained-queries record of a fine-tuned model directory; None when it has none (an imported
    model: what it was trained on cannot be told)."""
    path = Path(model_dir) / TRAINED_QUERIES
    return _read_json(path, ("dataset", "split", "query_ids")) if path.exists() else None
