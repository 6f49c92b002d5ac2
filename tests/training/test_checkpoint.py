import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import seqbert.training.checkpoint as ckpt
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForPreTraining
from seqbert.training.checkpoint import (
    CheckpointError,
    RunLock,
    find_resumable,
    list_checkpoints,
    load_model_state,
    merge_json,
    prune_checkpoints,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    save_model,
    set_rng_state,
)
from seqbert.training.optim import configure_optimizer


def tiny_mlm() -> BertForPreTraining:
    config = BertConfig(
        vocab_size=99, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=12, max_len=7
    )
    return BertForPreTraining(config, nsp=False)


def trained_pair():
    """A model and an AdamW that has taken two steps, so it has moments and a step count."""
    model = tiny_mlm()
    optimizer = configure_optimizer(model, lr=1e-2)
    batch = {"input_ids": torch.randint(5, 99, (3, 7)), "labels": torch.randint(5, 99, (3, 7))}
    for _ in range(2):
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_save_model_stores_tied_weight_once_and_reties(tmp_path):
    model = tiny_mlm()
    save_model(tmp_path / "final", model, {"hello": [1, 2]})
    state, extra = load_model_state(tmp_path / "final")
    assert extra == {"hello": [1, 2]}
    with ckpt.safe_open(tmp_path / "final" / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    assert "mlm.decoder.weight" not in stored and "bert.embeddings.word.weight" in stored
    fresh = tiny_mlm()
    fresh.load_state_dict(state)  # strict: the tied name is back
    assert fresh.mlm.decoder.weight is fresh.bert.embeddings.word.weight  # still tied after loading
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_checkpoint_round_trip_restores_optimizer_exactly(tmp_path):
    model, optimizer = trained_pair()
    path = save_checkpoint(tmp_path, 2, model, optimizer, {"note": "x"})
    loaded = read_checkpoint(path)
    assert loaded.step == 2 and loaded.state["note"] == "x"
    model2 = tiny_mlm()
    optimizer2 = configure_optimizer(model2, lr=1e-2)
    model2.load_state_dict(loaded.model_state)
    optimizer2.load_state_dict(loaded.optimizer_state)
    a, b = optimizer.state_dict(), optimizer2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, param_state in a["state"].items():
        for name, value in param_state.items():
            assert torch.equal(value, b["state"][index][name]), (index, name)
    assert not list(path.parent.glob(".tmp-*"))


@pytest.mark.real_fsync
def test_writes_fsync_files_before_renaming_them(tmp_path, monkeypatch):
    synced = []
    real = ckpt._fsync
    monkeypatch.setattr(ckpt, "_fsync", lambda path: (synced.append(path.name), real(path)))
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path, 2, model, optimizer, {})
    tmp_dir = f".tmp-step-00000002-{os.getpid()}"
    assert sorted(synced[:3]) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert synced[3:] == [tmp_dir, "checkpoints"]  # the files, the new directory, then its parent
    synced.clear()
    save_model(tmp_path / "final", model)
    pid = os.getpid()
    assert synced == [f".model.safetensors.tmp-{pid}", "final", f".model.json.tmp-{pid}", "final"]


def test_save_model_keeps_other_files_and_overwrites(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    save_model(tmp_path, nn.Linear(2, 2), {"v": 1})
    save_model(tmp_path, nn.Linear(2, 2), {"v": 2})
    assert load_model_state(tmp_path)[1] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors", "vocab.json"]


def test_crash_during_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path, 2, model, optimizer, {})

    def crash(path, optimizer):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_optimizer_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 4, model, optimizer, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert read_checkpoint(list_checkpoints(tmp_path)[0]).step == 2


def test_killed_writer_leftovers_are_ignored(tmp_path):
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path, 2, model, optimizer, {})
    leftover = tmp_path / "checkpoints" / ".tmp-step-00000004-12345"  # a SIGKILLed writer's temp dir
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 10)
    assert find_resumable(tmp_path).step == 2
    assert not leftover.exists()  # cleaned up on resume


def test_truncated_model_file_is_named_and_resume_falls_back(tmp_path, caplog):
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path, 2, model, optimizer, {})
    newest = save_checkpoint(tmp_path, 4, model, optimizer, {})
    model_file = newest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        read_checkpoint(newest)
    with caplog.at_level("WARNING"):
        found = find_resumable(tmp_path)
    assert found.step == 2
    assert "step-00000004" in caplog.text
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]  # the bad one is quarantined
    assert (tmp_path / "checkpoints" / "step-00000004.corrupt").is_dir()


def test_corrupt_safetensors_header_and_bad_json_are_named(tmp_path):
    model, optimizer = trained_pair()
    path = save_checkpoint(tmp_path, 2, model, optimizer, {})
    state = json.loads((path / "state.json").read_text())
    size = state["files"]["optimizer.safetensors"]
    (path / "optimizer.safetensors").write_bytes(b"\xff" * size)  # right size, garbage content
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        read_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_model_state(tmp_path / "nowhere")


def test_prune_keeps_last_n_and_the_best(tmp_path):
    model, optimizer = trained_pair()
    for step in (2, 4, 6, 8, 10):
        save_checkpoint(tmp_path, step, model, optimizer, {})
    prune_checkpoints(tmp_path, keep_last=2, keep_steps={4})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000008", "step-00000010"]


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_views_sharing_storage_are_saved_separately(tmp_path):
    module = nn.Module()
    base = torch.arange(12.0)
    module.register_buffer("a", base[:6])
    module.register_buffer("b", base[6:])
    save_model(tmp_path / "m", module)
    state, _ = load_model_state(tmp_path / "m")
    assert torch.equal(state["a"], base[:6]) and torch.equal(state["b"], base[6:])


def test_merge_json_sets_one_key_and_keeps_the_rest(tmp_path):
    path = tmp_path / "results" / "retrieval.json"
    merge_json(path, "a", {"x": 1})  # a missing file (and folder) is created
    merge_json(path, "b", [1, 2])
    merge_json(path, "a", {"x": 2})  # an existing key is replaced, not merged into
    assert json.loads(path.read_text()) == {"a": {"x": 2}, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["retrieval.json"]  # no temporary file left behind


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_file_and_tensor(tmp_path, bad):
    """A model file damaged without changing its size: the NaN/Inf would load and rank nothing."""
    save_model(tmp_path / "final", tiny_mlm())
    path = tmp_path / "final" / "model.safetensors"
    with ckpt.safe_open(path, "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    size = path.stat().st_size
    tensors["bert.embeddings.word.weight"][7, 3] = bad
    ckpt.save_file(tensors, path, metadata=metadata)
    assert path.stat().st_size == size
    with pytest.raises(
        CheckpointError,
        match=r"final/model.safetensors: tensor 'bert.embeddings.word.weight' holds 1 NaN/Inf",
    ):
        load_model_state(tmp_path / "final")
    # a checkpoint with such weights is damaged too: resume falls back to the one before it
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path, 2, model, optimizer, {})
    newest = save_checkpoint(tmp_path, 4, model, optimizer, {})
    with ckpt.safe_open(newest / "model.safetensors", "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    next(iter(tensors.values())).view(-1)[0] = bad
    ckpt.save_file(tensors, newest / "model.safetensors", metadata=metadata)
    assert find_resumable(tmp_path).step == 2


HOLD_LOCK = """
import sys, time
from seqbert.training.checkpoint import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_run_lock_excludes_a_second_writer_and_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            CheckpointError, match=re.escape(f"{run} is in use by another process (pid {holder.pid})")
        ):
            with RunLock(run):
                pass
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock with the process
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with RunLock(run) as lock:  # free again; this process now holds it, and its pid is recorded
        assert (run / ".lock").read_text() == str(os.getpid())
        with pytest.raises(CheckpointError, match=f"pid {os.getpid()}"):  # a second lock in-process too
            RunLock(run).__enter__()
        assert lock._fd is not None
    with RunLock(run):  # released on exit
        pass
