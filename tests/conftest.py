import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def data_dir() -> Path | None:
    """The real-data directory named by SEQBERT_DATA_DIR, or None (tests needing it skip)."""
    value = os.environ.get("SEQBERT_DATA_DIR")
    return Path(value) if value and Path(value).is_dir() else None


def require_data(relative: str) -> Path:
    root = data_dir()
    if root is None or not (root / relative).exists():
        pytest.skip(f"real data {relative} not found: set SEQBERT_DATA_DIR to the data directory")
    return root / relative
