"""DistributedDataParallel on CPU: `torchrun --nproc_per_node 2` with gloo against one process, same global
batch. One launch runs two tasks (ddp_runs.py):
- mlm: the tiny masked LM masks the same number of tokens in every row, so each rank's mean MLM loss over its
  equal half of the batch averages to the global batch's mean loss, and the two runs must agree;
- rec: a sampled-softmax recommender whose collate adds `negatives` (K,) shared by the batch, which shard()
  must pass whole to each rank, with the LR schedule on a fake time clock both ranks agree on."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import train_tiny
import train_tiny_rec
from ddp_runs import MLM_ARGS

from seqbert.training.checkpoint import load_model_state

SCRIPT = Path(__file__).with_name("ddp_runs.py")


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # a session of its own, so that a hung run's worker processes can be killed with the launcher
    process = subprocess.Popen([*launcher, str(SCRIPT), str(out)], env=env, start_new_session=True)
    try:
        assert process.wait(timeout=180) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(ddp: Path, single: Path) -> None:
    rank0, _ = load_model_state(ddp / "final-rank0")
    rank1, _ = load_model_state(ddp / "final-rank1")
    reference, _ = load_model_state(single / "final-rank0")
    for name, tensor in rank0.items():
        assert torch.equal(rank1[name], tensor), name  # DDP keeps the replicas identical
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5)


def test_two_gloo_ranks_match_one_process(tmp_path, ddp_out):
    ddp, single = ddp_out / "mlm", tmp_path / "single"
    train_tiny.run(single, **MLM_ARGS)  # in-process
    assert_same_weights(ddp, single)
    ddp_curve, single_curve = records(ddp), records(single)
    assert [r["step"] for r in ddp_curve] == list(range(1, 13))
    for r, r1 in zip(ddp_curve, single_curve, strict=True):
        assert abs(r["loss"] - r1["loss"]) < 1e-5 * abs(r1["loss"]), r["step"]
        assert abs(r["grad_norm"] - r1["grad_norm"]) < 1e-4 * abs(r1["grad_norm"]), r["step"]
    assert json.loads((ddp / "result-rank1.json").read_text())["step"] == 12


def test_two_gloo_ranks_with_a_sampled_loss_and_the_time_clock(tmp_path, ddp_out):
    ddp, single = ddp_out / "rec", tmp_path / "single"
    reference = train_tiny_rec.run(single)
    assert (reference.step, reference.stop_reason, reference.train_seconds) == (12, "time_budget", 6.0)
    assert_same_weights(ddp, single)
    ddp_curve, single_curve = records(ddp), records(single)
    assert [r["step"] for r in ddp_curve] == list(range(1, 13))
    for r, r1 in zip(ddp_curve, single_curve, strict=True):
        assert r["lr"] == r1["lr"] and r["train_seconds"] == r1["train_seconds"], r["step"]
        assert abs(r["loss"] - r1["loss"]) < 1e-5 * abs(r1["loss"]), r["step"]
    assert json.loads((ddp / "result-rank1.json").read_text())["stop_reason"] == "time_budget"
