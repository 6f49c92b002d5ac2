"""GPU checks (marked `gpu`, skipped without CUDA; benchmarks/gpu_check.sh runs them on a GPU machine)."""

import pytest
import torch

from seqbert.model import BertConfig, BertForPreTraining
from seqbert.training.data import TensorBatchSource
from seqbert.training.loop import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CONFIG = BertConfig(
    vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_len=16
)


def batch(B=13, L=9):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 99, (B, L), generator=g)
    mask = (torch.arange(L)[None] < torch.randint(3, L + 1, (B,), generator=g)[:, None]).long()
    labels = torch.where(torch.rand(B, L, generator=g) < 0.3, ids, -100).masked_fill(mask == 0, -100)
    labels[:, 0] = ids[:, 0]
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (B,), generator=g),
    }


def test_gpu_logits_equal_cpu_logits():
    model = BertForPreTraining(CONFIG).eval()
    b = batch()
    with torch.no_grad():
        cpu = model(b)
        gpu = model.cuda()({k: v.cuda() for k, v in b.items()})
    torch.testing.assert_close(gpu.mlm_logits.cpu(), cpu.mlm_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.nsp_logits.cpu(), cpu.nsp_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_mixed_precision_training_steps_reduce_the_loss(tmp_path, precision):
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG)
    b = batch(B=32)
    source = TensorBatchSource(b, batch_size=32, seed=0)
    config = TrainConfig(
        max_steps=30, lr=3e-3, device="cuda", precision=precision, progress=False, log_every=10
    )
    with torch.no_grad():
        first = model(b).loss.item()
    result = train(model, source, config, tmp_path)
    assert result.step == 30
    model = model.cpu().eval()
    with torch.no_grad():
        assert model(b).loss.item() < first
