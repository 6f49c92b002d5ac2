"""DistributedDataParallel on CPU: `torchrun --nproc_per_node 2` with gloo against one process, same global
batch. The tiny task masks the same number of tokens in every row, so each rank's mean MLM loss over its
equal half of the batch averages to the global batch's mean loss, and the two runs must agree."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import train_tiny

from seqbert.training.checkpoint import load_model_state

SCRIPT = Path(__file__).with_name("train_tiny.py")
ARGS = ["--max-steps", "12", "--checkpoint-every", "5", "--dropout", "0.0", "--batch-size", "8"]


def curve(run_dir: Path) -> list[tuple[int, float, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, lines)]


def test_two_gloo_ranks_match_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    train_tiny.run(single, max_steps=12, checkpoint_every=5, batch_size=8, dropout=0.0)  # in-process
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # a session of its own, so that a hung run's worker processes can be killed with the launcher
    process = subprocess.Popen([*launcher, str(SCRIPT), str(ddp), *ARGS], env=env, start_new_session=True)
    try:
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    rank0, _ = load_model_state(ddp / "final-rank0")
    rank1, _ = load_model_state(ddp / "final-rank1")
    reference, _ = load_model_state(single / "final-rank0")
    for name, tensor in rank0.items():
        assert torch.equal(rank1[name], tensor), name  # DDP keeps the replicas identical
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5)

    ddp_curve, single_curve = curve(ddp), curve(single)
    assert [s for s, _, _ in ddp_curve] == list(range(1, 13))
    for (step, loss, norm), (_, loss_1, norm_1) in zip(ddp_curve, single_curve, strict=True):
        assert abs(loss - loss_1) < 1e-5 * abs(loss_1), step
        assert abs(norm - norm_1) < 1e-4 * abs(norm_1), step
    assert json.loads((ddp / "result-rank1.json").read_text())["step"] == 12
