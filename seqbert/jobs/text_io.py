"""What the text jobs share: where a configured data path points, and writing `OUT/metrics.json`."""

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
