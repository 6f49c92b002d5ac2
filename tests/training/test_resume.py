"""The key guarantee: a run SIGKILLed mid-way and resumed ends with exactly the weights of an uninterrupted
run (CPU, deterministic mode, dropout on, per-batch random masking through the collate generator).
Only the killed run is a subprocess; the reference and the resumed run execute in this process (both
single-threaded, like the subprocess), which also checks that a checkpoint carries across processes."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import train_tiny

from seqbert.training.checkpoint import list_checkpoints, load_model_state

SCRIPT = Path(__file__).with_name("train_tiny.py")
ARGS = ["--max-steps", "30", "--checkpoint-every", "4", "--dropout", "0.1"]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_sigkilled_run_resumes_to_identical_weights(tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    train_tiny.run(reference, max_steps=30, checkpoint_every=4, dropout=0.1)  # in-process: one import less

    # the same run, paced at >= 50 ms a step, killed once the step-8 checkpoint is on disk
    paced = [sys.executable, str(SCRIPT), str(run), *ARGS, "--step-sleep", "0.05"]
    process = subprocess.Popen(paced)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-00000008").is_dir():
        assert process.poll() is None, "the paced run exited before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    steps_done = [int(p.name.split("-")[1]) for p in list_checkpoints(run)]
    assert 30 not in steps_done and not (run / "final-rank0").exists()  # killed mid-way, not at the end

    result = train_tiny.run(run, max_steps=30, checkpoint_every=4, dropout=0.1)  # resumes, in this process
    assert result.step == 30
    expected, _ = load_model_state(reference / "final-rank0")
    resumed, _ = load_model_state(run / "final-rank0")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    assert losses(run) == losses(reference)  # the whole loss curve, the part before the kill included
