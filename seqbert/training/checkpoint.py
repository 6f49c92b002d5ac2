"""Checkpoints and final models on disk: safetensors + JSON, written atomically, never pickled.

A training checkpoint is a directory `run_dir/checkpoints/step-00000120/` holding
  model.safetensors      the model's tensors (tied weights stored once, re-tied on load)
  optimizer.safetensors  the optimizer's per-parameter tensors under "state.<param index>.<name>" keys,
                         its param_groups and non-tensor state as JSON in the safetensors metadata
  state.json             step, data position, RNG states, best metric, config, ... and each file's size
(run_dir/metrics.jsonl is also trimmed here on resume, see `truncate_metrics`.)
It is written into a hidden temporary directory, every file fsync'ed, then renamed into place, so a crash
mid-write leaves at most a stray `.tmp-*` directory (removed on resume) and never a half-written `step-*`
one. Final models (`save_model`) are two files, each written to a temporary name and renamed over. Reading checks
every file (sizes, safetensors headers, finite model weights) before anything is applied; a damaged checkpoint
raises `CheckpointError` naming the file, and `find_resumable` then falls back to the previous one (the
training loop likewise falls back from a damaged best checkpoint to the best valid one).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

log = logging.getLogger(__name__)

MODEL_FILE, MODEL_JSON = "model.safetensors", "model.json"
OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint or model file that is missing, truncated or unreadable; the message names the file."""


class RunLock:
    """An exclusive lock on a run directory while one process writes it (`OUT/.lock`, flock).

    The lock dies with its process (the kernel drops it), so a killed run never leaves a stale lock; a
    second writer, in this process or another, gets a CheckpointError naming the holder's pid.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(
                f"{self.path.parent} is in use by another process (pid {holder}); wait for it or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------------------------------- low-level I/O


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory is fsync'ed through a read-only descriptor too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to fill; on success fsync it and rename it to `final`.

    An existing `final` is moved aside first (a rename cannot replace a non-empty directory) and deleted
    only once the new one is in place. On an exception the temporary directory is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path of the file `final` to write; on success fsync it, rename it over
    `final` and fsync the directory. Other files in the directory are left alone."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def merge_json(path: str | Path, key: str, value: Any) -> None:
    """Set `key` of the JSON object in the file `path` to `value`, keeping its other keys (a results file that
    several scripts write into); the file is created if missing and replaced atomically."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in `path`; a missing or unreadable file raises CheckpointError naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file is missing") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (copied to CPU memory) and the metadata of one safetensors file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # SafetensorError and OSError: both mean the file cannot be trusted
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt? ({e})") from e
    return tensors, metadata


# ------------------------------------------------------------------------------------------- model tensors


def _unique_tensors(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into tensors to store and aliases {tied name: stored name}.

    safetensors refuses tensors sharing storage; a tied weight (the MLM decoder = the word embeddings) is
    stored once under its first name and re-added on load. Other views sharing a storage are copied.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        if tensor.numel() == 0:
            tensors[name] = tensor.cpu().clone()
            continue
        ptr = tensor.untyped_storage().data_ptr()
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        shared = ptr in storages
        storages.add(ptr)
        tensor = tensor.cpu()
        tensors[name] = tensor.clone() if shared or not tensor.is_contiguous() else tensor
    return tensors, aliases


def _write_model_file(path: Path, model: nn.Module) -> None:
    tensors, aliases = _unique_tensors(model.state_dict())
    save_file(tensors, path, metadata={"aliases": json.dumps(aliases)})


def read_model_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A `model.safetensors` written here as a state dict, tied names restored (they share one tensor).

    A NaN or Inf in any floating-point tensor raises CheckpointError naming the file and the tensor: the
    training loop never saves one (it stops on a non-finite loss), so it means damage, and such a model
    would otherwise load and serve garbage (a NaN score ranks nothing) without an error.
    """
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {bad} NaN/Inf value(s) of {tensor.numel()}: damaged weights"
            )
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except ValueError as e:
        raise CheckpointError(f"{path}: bad 'aliases' metadata ({e})") from e
    for alias, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{path}: tied weight {alias!r} points at missing tensor {target!r}")
        tensors[alias] = tensors[target]
    return tensors


def save_model(directory: str | Path, model: nn.Module, extra_json: dict | None = None) -> Path:
    """Write `directory/model.safetensors` and `directory/model.json` (`extra_json`, e.g. the configs needed
    to rebuild the model), each atomically; other files there (a vocabulary, ...) are kept. Returns the
    directory."""
    directory = Path(directory)
    with atomic_file(directory / MODEL_FILE) as tmp:
        _write_model_file(tmp, model)
    with atomic_file(directory / MODEL_JSON) as tmp:
        _write_json(tmp, extra_json or {})
    return directory


def load_model_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict with tied names restored, the JSON saved beside it) from a `save_model` directory.
    `model.load_state_dict(state)` then works with strict=True; tied tensors share one loaded tensor."""
    directory = Path(directory)
    return read_model_file(directory / MODEL_FILE), read_json(directory / MODEL_JSON)


# ------------------------------------------------------------------------------------------------ RNG states


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states as JSON-able data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state().numpy().tobytes()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()]
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])


# ------------------------------------------------------------------------------------------ optimizer state


def _write_optimizer_file(path: Path, optimizer: torch.optim.Optimizer) -> None:
    full = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, param_state in full["state"].items():
        for name, value in param_state.items():
            key = f"state.{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    metadata = {"param_groups": json.dumps(full["param_groups"]), "scalars": json.dumps(scalars)}
    save_file(tensors, path, metadata=metadata)


def _read_optimizer_file(path: Path) -> dict:
    """The `optimizer.state_dict()` that `_write_optimizer_file` flattened."""
    tensors, metadata = _read_safetensors(path)
    try:
        groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata.get("scalars", "{}"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: missing or bad 'param_groups' metadata ({e})") from e
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])  # JSON turned the tuple into a list
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """A checkpoint read fully into memory and checked, not yet applied to anything."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict
    state: dict  # state.json: whatever the training loop saved, plus "step" and "files"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest step first (temporary and quarantined ones excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    run_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> Path:
    """Write the checkpoint of `step` atomically and return its directory."""
    final = checkpoint_dir(run_dir, step)
    with atomic_dir(final) as tmp:
        _write_model_file(tmp / MODEL_FILE, model)
        _write_optimizer_file(tmp / OPTIMIZER_FILE, optimizer)
        files = {name: (tmp / name).stat().st_size for name in (MODEL_FILE, OPTIMIZER_FILE)}
        _write_json(tmp / STATE_FILE, {**state, "step": step, "files": files})  # written last
    return final


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check every file of a checkpoint directory; `CheckpointError` names the first bad file."""
    path = Path(path)
    state = read_json(path / STATE_FILE)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "files" not in state:
        raise CheckpointError(f"{path / STATE_FILE}: expected an object with 'step' and 'files'")
    for name, size in state["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: file is missing")
        if file.stat().st_size != size:
            raise CheckpointError(
                f"{file}: {file.stat().st_size} bytes, expected {size}: truncated or overwritten"
            )
    return Checkpoint(
        path,
        state["step"],
        read_model_file(path / MODEL_FILE),
        _read_optimizer_file(path / OPTIMIZER_FILE),
        state,
    )


def find_resumable(run_dir: str | Path, quarantine: bool = True) -> Checkpoint | None:
    """The newest checkpoint of `run_dir` that reads cleanly, or None when there is none.

    A damaged one is logged and, with `quarantine`, renamed to `step-*.corrupt` so that it is neither
    resumed from again nor counted as one of the last N; the run falls back to the one before it.
    `quarantine` also removes the `.tmp-*` directories of writers that were killed.
    """
    if quarantine:
        for stray in (Path(run_dir) / "checkpoints").glob(".tmp-step-*"):
            shutil.rmtree(stray, ignore_errors=True)
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s", e)
            if quarantine:
                os.replace(path, path.with_name(path.name + ".corrupt"))
    return None


def prune_checkpoints(run_dir: str | Path, keep_last: int, keep_steps: set[int] = frozenset()) -> None:
    """Delete all but the newest `keep_last` checkpoints and those of `keep_steps` (e.g. the best)."""
    paths = list_checkpoints(run_dir)
    recent = set(paths[-keep_last:]) if keep_last > 0 else set()
    for path in paths:
        step = int(_STEP_DIR.match(path.name).group(1))
        if path not in recent and step not in keep_steps:
            shutil.rmtree(path)


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the lines of a metrics.jsonl with step <= `step` (a resumed run rewrites the later ones); a line
    cut short by a crash is dropped too. The file is replaced atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
