"""Where the public interaction logs come from, and `fetch(name, data_dir)` to download one.

Each `Source` names a URL, the sha256 of what the URL returns (when known), and the file we keep under
`data_dir` with its sha256. Layout under `data_dir` (the same as the project's shared data folder):

    ml-1m/ml-1m.txt          SASRec/BERT4Rec ML-1M (`user item`, chronological per user)
    ml-1m/raw/ratings.dat    GroupLens ML-1M ratings (`user::item::rating::timestamp`)
    ml-100k/raw/u.data       GroupLens ML-100K ratings (`user \\t item \\t rating \\t timestamp`)
    beauty/beauty.txt        BERT4Rec Amazon Beauty (`user item`, chronological per user)

Downloads go to a temporary file in the target folder, are checked against the sha256, and only then are
renamed into place (atomic on one file system), so an interrupted or corrupted download never leaves a
file that looks complete. MovieLens terms forbid redistribution: we fetch from GroupLens, never mirror.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "SEQBERT_DATA_DIR"


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    url_sha256: str | None  # sha256 of the downloaded bytes (the archive for zips); None = unknown
    file: str  # where the data file lives, relative to data_dir
    file_sha256: str | None  # sha256 of that file (the extracted member for zips); None = unknown
    member: str | None = None  # the zip member to extract, None for a plain file
    note: str = ""


# sha256 values: ml-1m.txt and beauty.txt are those of the files in the project's shared data folder,
# which its README shows are the very blobs of the pinned commits below. The GroupLens archive hashes
# (and sizes 5,917,549 / 4,924,029 bytes) are the ones tensorflow/datasets records in
# tensorflow_datasets/url_checksums/movielens.txt. u.data's hash is of the extracted file (our copy is the
# unchanged GroupLens file); ratings.dat's extracted hash is unknown to us, so only the archive is checked.
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="ml-1m",
            url="https://raw.githubusercontent.com/kang205/SASRec/e3738967fddab206d6eeb4fda433e7a7034dd8b1/data/ml-1m.txt",
            url_sha256="b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2",
            file="ml-1m/ml-1m.txt",
            file_sha256="b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2",
            note="the same file is data/ml-1m.txt of FeiSun/BERT4Rec@615eaf2004abecda487a38d5b0c72f3dcfcae5b3",
        ),
        Source(
            name="ml-1m-raw",
            url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
            url_sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            file="ml-1m/raw/ratings.dat",
            file_sha256=None,
            member="ml-1m/ratings.dat",
        ),
        Source(
            name="ml-100k",
            url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
            url_sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            file="ml-100k/raw/u.data",
            file_sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            member="ml-100k/u.data",
        ),
        Source(
            name="beauty",
            url="https://raw.githubusercontent.com/FeiSun/BERT4Rec/615eaf2004abecda487a38d5b0c72f3dcfcae5b3/data/beauty.txt",
            url_sha256="f480b7a7403852342ffd8f9809bb30697dd669be31813d0e204b698fec86ef49",
            file="beauty/beauty.txt",
            file_sha256="f480b7a7403852342ffd8f9809bb30697dd669be31813d0e204b698fec86ef49",
        ),
    )
}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The flag wins, then $SEQBERT_DATA_DIR; there is no default (we never guess a path)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        raise ValueError(f"no data directory: pass --data-dir DIR or set {DATA_DIR_ENV}")
    return Path(data_dir).expanduser()


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


def locate(name: str, data_dir: str | Path | None) -> Path:
    """Path of dataset `name`'s file under the data dir; a clear error saying where we looked and what to do."""
    source = get_source(name)
    root = resolve_data_dir(data_dir)
    path = root / source.file
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: looked for {path}, not found. Download it with `seqbert data fetch {name} --data-dir {root}` "
            f"(from {source.url}), or put the file there."
        )
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def _check(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{what}: sha256 mismatch, expected {expected}, got {got}")


def fetch(name: str, data_dir: str | Path | None, *, force: bool = False, timeout: float = 60.0) -> Path:
    """Download dataset `name` into data_dir (checked, atomic). Returns the file path; no-op if present."""
    source = get_source(name)
    target = resolve_data_dir(data_dir) / source.file
    if target.is_file() and not force:
        _check(target, source.file_sha256, f"{target} (already present; --force downloads it again)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # temp files live next to the target so that the final rename stays on one file system (atomic)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        download = Path(tmp) / "download"
        _download(source.url, download, timeout)
        _check(download, source.url_sha256, source.url)
        if source.member is None:
            data = download
        else:
            data = Path(tmp) / "member"
            try:
                with (
                    zipfile.ZipFile(download) as archive,
                    archive.open(source.member) as src,
                    open(data, "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst, length=1 << 20)
            except (zipfile.BadZipFile, KeyError) as e:
                raise ValueError(f"{source.url}: cannot extract {source.member!r} ({e})") from e
            _check(data, source.file_sha256, f"{source.url}!{source.member}")
        os.replace(data, target)
    return target
