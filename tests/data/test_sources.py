import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from seqbert.data import sources
from seqbert.data.sources import Source


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(tmp_path: Path, name: str, data: bytes) -> str:
    """A file:// URL to `data`, standing in for the real download."""
    path = tmp_path / "server" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_plain_file(tmp_path, monkeypatch):
    data = b"1 1\n1 2\n"
    url = serve(tmp_path, "ml-1m.txt", data)
    monkeypatch.setitem(
        sources.SOURCES, "ml-1m", Source("ml-1m", url, sha(data), "ml-1m/ml-1m.txt", sha(data))
    )
    path = sources.fetch("ml-1m", tmp_path / "data")
    assert path == tmp_path / "data" / "ml-1m" / "ml-1m.txt" and path.read_bytes() == data
    assert leftovers(path.parent) == ["ml-1m.txt"]  # the temp folder is gone


def test_fetch_sha_mismatch_saves_nothing(tmp_path, monkeypatch):
    url = serve(tmp_path, "beauty.txt", b"tampered\n")
    monkeypatch.setitem(
        sources.SOURCES, "beauty", Source("beauty", url, sha(b"original\n"), "beauty/beauty.txt", None)
    )
    with pytest.raises(ValueError, match="sha256 mismatch"):
        sources.fetch("beauty", tmp_path / "data")
    assert leftovers(tmp_path / "data" / "beauty") == []


def test_fetch_zip_member(tmp_path, monkeypatch):
    member = b"1\t2\t5\t881250949\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", member)
        archive.writestr("ml-100k/README", b"readme")
    url = serve(tmp_path, "ml-100k.zip", buffer.getvalue())
    source = Source(
        "ml-100k", url, sha(buffer.getvalue()), "ml-100k/raw/u.data", sha(member), member="ml-100k/u.data"
    )
    monkeypatch.setitem(sources.SOURCES, "ml-100k", source)
    path = sources.fetch("ml-100k", tmp_path / "data")
    assert path.read_bytes() == member and leftovers(path.parent) == ["u.data"]
    # a wrong hash for the extracted member is caught after extraction, before the rename
    monkeypatch.setitem(
        sources.SOURCES, "ml-100k", Source(**{**source.__dict__, "file_sha256": sha(b"other")})
    )
    with pytest.raises(ValueError, match=r"ml-100k.zip!ml-100k/u.data: sha256 mismatch"):
        sources.fetch("ml-100k", tmp_path / "other", force=True)
    assert leftovers(tmp_path / "other" / "ml-100k" / "raw") == []


def test_fetch_through_patched_opener(tmp_path, monkeypatch):
    data = b"7 8\n"
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setitem(
        sources.SOURCES,
        "beauty",
        Source("beauty", "https://example.invalid/b.txt", sha(data), "beauty/beauty.txt", sha(data)),
    )
    assert sources.fetch("beauty", tmp_path).read_bytes() == data
    assert sources.fetch("beauty", tmp_path).read_bytes() == data  # present and valid: no second download
    assert calls == ["https://example.invalid/b.txt"]


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQBERT_DATA_DIR", str(tmp_path / "env"))
    assert sources.resolve_data_dir(None) == tmp_path / "env"
    assert sources.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("SEQBERT_DATA_DIR")
    with pytest.raises(ValueError, match="--data-dir DIR or set SEQBERT_DATA_DIR"):
        sources.resolve_data_dir(None)


def test_locate_missing_file_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        sources.locate("ml-100k", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "ml-100k" / "raw" / "u.data") in message
    assert "seqbert data fetch ml-100k" in message and "files.grouplens.org" in message
    with pytest.raises(KeyError, match="unknown dataset 'ml-20m'"):
        sources.locate("ml-20m", tmp_path)


def test_recorded_hashes_match_local_copies():
    root = os.environ.get("SEQBERT_DATA_DIR")
    checked = 0
    for source in sources.SOURCES.values():
        path = Path(root or "/nonexistent") / source.file
        if source.file_sha256 is not None and path.is_file():
            assert sources.sha256_file(path) == source.file_sha256, source.name
            checked += 1
    if checked == 0:
        pytest.skip("needs $SEQBERT_DATA_DIR with at least one of the files")
