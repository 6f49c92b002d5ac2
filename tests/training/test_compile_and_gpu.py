"""torch.compile (slow on 2 CPU cores: ~50 s of compilation) and the CUDA precisions (need a GPU)."""

import pytest
import torch
from test_loop import config, fresh, read_metrics, regression_source, weights

from seqbert.training import train
from seqbert.training.checkpoint import list_checkpoints, read_checkpoint


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager, compiled = fresh(), fresh()
    train(eager, regression_source(), config(max_steps=3), tmp_path / "eager")
    train(compiled, regression_source(), config(max_steps=3, compile=True), tmp_path / "compiled")
    reference = weights(eager)
    assert list(compiled.state_dict()) == list(reference)  # saved without torch.compile's "_orig_mod." prefix
    for name, tensor in weights(compiled).items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains_and_resumes(tmp_path, precision):
    model = fresh()
    cfg = config(max_steps=6, device="cuda", precision=precision, checkpoint_every=3)
    result = train(model, regression_source(), cfg, tmp_path)
    assert result.step == 6 and next(model.parameters()).device.type == "cuda"
    records = read_metrics(tmp_path)
    assert records[-1]["loss"] < records[0]["loss"] * 10  # finite and not diverging
    saved = read_checkpoint(list_checkpoints(tmp_path)[-1])
    if precision == "fp16":
        assert saved.state["scaler"]["scale"] > 0  # the GradScaler's state is checkpointed
    more = train(
        model, regression_source(), config(max_steps=9, device="cuda", precision=precision), tmp_path
    )
    assert more.step == 9
