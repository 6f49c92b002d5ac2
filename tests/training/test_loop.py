import json
import math
import shutil
import sys
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import seqbert.training.checkpoint as ckpt
import seqbert.training.loop as loop
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForSequenceClassification
from seqbert.training import NonFiniteLossError, TensorBatchSource, TrainConfig, train
from seqbert.training.checkpoint import list_checkpoints, read_checkpoint
from seqbert.training.optim import lr_at_progress


@dataclass
class Output:
    loss: torch.Tensor


class Regressor(nn.Module):
    """LayerNorm -> Linear -> tanh -> dropout -> Linear; per-example mean squared error."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(5)
        self.hidden = nn.Linear(5, 7)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(7, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        pred = self.out(self.dropout(torch.tanh(self.hidden(self.norm(batch["x"]))))).squeeze(-1)  # (B,)
        return Output(F.mse_loss(pred, batch["y"]))


def regression_source(rows: int = 40, batch_size: int = 4, collate=None) -> TensorBatchSource:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(rows, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    return TensorBatchSource({"x": x, "y": y}, batch_size=batch_size, seed=5, collate=collate)


def add_noise(raw, generator):
    """Per-batch randomness that must be replayed exactly after a resume."""
    return {"x": raw["x"] + 0.1 * torch.randn(raw["x"].shape, generator=generator), "y": raw["y"]}


def config(**overrides) -> TrainConfig:
    base = dict(
        max_steps=8, lr=1e-2, warmup_steps=2, device="cpu", precision="fp32", log_every=1, progress=False
    )
    return TrainConfig(**(base | overrides))


def fresh(dropout: float = 0.0) -> Regressor:
    torch.manual_seed(0)
    return Regressor(dropout)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_accumulation_matches_the_larger_batch(tmp_path):
    sizes = dict(vocab_size=23, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=12, max_len=6)
    bert = BertConfig(**sizes, dropout=0.0, attention_dropout=0.0)
    g = torch.Generator().manual_seed(4)
    data = {
        "input_ids": torch.randint(1, 23, (48, 6), generator=g),
        "labels": torch.randint(0, 3, (48,), generator=g),
    }
    models = []
    for name, batch_size, accum in (("big", 8, 1), ("accum", 4, 2)):
        torch.manual_seed(0)
        model = BertForSequenceClassification(bert, num_labels=3)
        source = TensorBatchSource(data, batch_size=batch_size, seed=1)
        train(model, source, config(max_steps=6, grad_accum=accum, lr=3e-2), tmp_path / name)
        models.append(model)
    big, accum = (weights(m) for m in models)
    assert not torch.equal(big["classifier.weight"], BertForSequenceClassification(bert, 3).classifier.weight)
    for name in big:  # the attention key bias has a ~0 gradient whose float noise Adam scales up to ~1e-6
        torch.testing.assert_close(accum[name], big[name], rtol=1e-4, atol=1e-5)
    loss_big = [r["loss"] for r in read_metrics(tmp_path / "big")]
    loss_accum = [r["loss"] for r in read_metrics(tmp_path / "accum")]
    assert loss_big == pytest.approx(loss_accum, rel=1e-5)


def test_metrics_jsonl_and_result(tmp_path):
    result = train(
        fresh(), regression_source(), config(log_every=3, eval_every=4), tmp_path, lambda m: {"mse": 1.0}
    )
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [3, 4, 6, 8]  # every 3 steps, at evaluations and at the end
    for record in records:
        assert {"step", "loss", "lr", "grad_norm", "seconds", "items_per_s", "epoch"} <= set(record)
        assert math.isfinite(record["loss"]) and record["items_per_s"] > 0
        if sys.platform == "linux":  # memory is logged where /proc exists: now <= high-water mark
            assert 0 < record["rss_mb"] <= record["peak_rss_mb"]
    assert records[1]["eval"] == {"mse": 1.0} and "eval" not in records[0]
    assert result.step == 8 and result.stop_reason == "max_steps" and result.last_eval == {"mse": 1.0}
    assert result.checkpoint == list_checkpoints(tmp_path)[-1]  # a final checkpoint is always written


def test_damaged_newest_checkpoint_falls_back_and_resume_is_exact(tmp_path):
    # reference: 12 uninterrupted steps with dropout and per-batch noise
    reference = fresh(dropout=0.2)
    train(reference, regression_source(collate=add_noise), config(max_steps=12), tmp_path / "ref")
    # the same run with checkpoints at 4, 8, 12; then as if it had died after a damaged step-8 write
    run = tmp_path / "run"
    cfg = config(max_steps=12, checkpoint_every=4, keep_last=3)
    train(fresh(dropout=0.2), regression_source(collate=add_noise), cfg, run)
    shutil.rmtree(run / "checkpoints" / "step-00000012")
    damaged = run / "checkpoints" / "step-00000008" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    # resume into a model with other weights: everything must come from the step-4 checkpoint
    model = Regressor(dropout=0.2)
    result = train(model, regression_source(collate=add_noise), cfg, run)
    assert result.step == 12
    assert (run / "checkpoints" / "step-00000008.corrupt").is_dir()
    for name, tensor in weights(reference).items():
        assert torch.equal(model.state_dict()[name], tensor), name
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, 13))  # lines written after step 4 by the first run were dropped
    assert [r["loss"] for r in read_metrics(run)] == [r["loss"] for r in read_metrics(tmp_path / "ref")]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    source = regression_source()
    source.tensors["x"][4 * 5 + 2, 1] = float("nan")  # a NaN in batch 5 (0-based) of epoch 0
    source.shuffle = False
    model = fresh()
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6 .*step-00000004"):
        train(model, source, config(checkpoint_every=2), tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]
    assert read_checkpoint(list_checkpoints(tmp_path)[-1]).step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


def test_early_stopping_keeps_and_restores_the_best(tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.8, 0.95])
    cfg = config(
        max_steps=40, eval_every=2, early_stopping_metric="acc", patience=2, keep_last=1, restore_best=True
    )
    model = fresh()
    result = train(model, regression_source(), cfg, tmp_path, lambda m: {"acc": next(scores)})
    assert result.stop_reason == "early_stopping"
    assert (result.step, result.best_step, result.best_metric) == (8, 4, 0.9)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000008"]
    best = read_checkpoint(list_checkpoints(tmp_path)[0]).model_state
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best[name]), name
    # calling again on the finished run does not train past the early stop
    again = train(fresh(), regression_source(), cfg, tmp_path, lambda m: {"acc": 0.0})
    assert (again.step, again.stop_reason, again.best_step) == (8, "early_stopping", 4)


def test_evaluate_sees_eval_mode_and_min_mode(tmp_path):
    seen = []

    def evaluate(model):
        seen.append(model.training)
        return {"loss": 1.0 / (len(seen))}

    cfg = config(eval_every=2, early_stopping_metric="loss", early_stopping_mode="min", patience=1)
    result = train(fresh(), regression_source(), cfg, tmp_path, evaluate)
    assert seen == [False] * 4 and result.best_step == 8 and result.stop_reason == "max_steps"


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    def slow(raw, generator):
        time.sleep(0.02)
        return raw

    cfg = config(max_steps=100_000, max_seconds=0.3)
    result = train(fresh(), regression_source(collate=slow), cfg, tmp_path)
    assert result.stop_reason == "time_budget" and 0 < result.step < 100_000
    assert read_checkpoint(list_checkpoints(tmp_path)[-1]).step == result.step
    # a new call resumes past the budget stop
    more = train(fresh(), regression_source(collate=slow), cfg, tmp_path)
    assert more.step > result.step


def test_resume_false_refuses_a_used_run_dir(tmp_path):
    train(fresh(), regression_source(), config(max_steps=2), tmp_path)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(fresh(), regression_source(), config(max_steps=2, resume=False), tmp_path)


def test_deterministic_flag_is_restored(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    train(fresh(), regression_source(), config(max_steps=2, deterministic=True), tmp_path)
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_steps", 0),
        ("grad_accum", 0),
        ("lr", 0.0),
        ("schedule", "step"),
        ("precision", "fp8"),
        ("early_stopping_mode", "up"),
        ("clip_norm", -1.0),
        ("warmup_steps", 9),
        ("max_seconds", 0.0),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        config(**{field: value})


def test_patience_needs_a_metric_and_evaluations():
    with pytest.raises(ValueError, match="early_stopping_metric"):
        config(patience=2, eval_every=2)
    with pytest.raises(ValueError, match="eval_every"):
        config(patience=2, early_stopping_metric="acc")


def test_a_metric_without_evaluate_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no evaluate callback"):
        train(fresh(), regression_source(), config(early_stopping_metric="acc"), tmp_path)


# ----------------------------------------------------------------------------- the time-clocked schedule


class FakeClock:
    """Seconds that pass only when the test says so: the loop's timing is then exact and machine-free."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def ticking(clock: FakeClock, seconds: float, then=None, crash_at: int | None = None):
    """A collate that spends `seconds` of fake training time per batch (and optionally raises at its
    `crash_at`-th call, as a process killed mid-run)."""
    calls = [0]

    def collate(raw, generator):
        calls[0] += 1
        if crash_at is not None and calls[0] == crash_at:
            raise KeyboardInterrupt("killed")
        clock.now += seconds
        return then(raw, generator) if then else raw

    return collate


def slow_evaluate(clock: FakeClock, seconds: float = 100.0):
    def evaluate(model):
        clock.now += seconds  # evaluation time: must not count against the training budget
        return {"mse": 1.0}

    return evaluate


def timed(**overrides) -> TrainConfig:
    base = dict(warmup_steps=0, warmup_fraction=0.2, schedule_clock="time", max_seconds=10.0, lr=1.0)
    return config(**(base | dict(max_steps=1000, min_lr_ratio=0.1) | overrides))


def test_time_schedule_lr_at_0_50_and_100_percent_of_the_budget(tmp_path):
    # each step spends 1 fake second; evaluations every 3 steps spend 100 s that the schedule ignores
    clock = FakeClock()
    source = regression_source(collate=ticking(clock, 1.0))
    result = train(fresh(), source, timed(eval_every=3), tmp_path, slow_evaluate(clock), clock=clock)
    assert (result.stop_reason, result.step, result.train_seconds) == ("time_budget", 10, 10.0)
    assert result.seconds >= 10.0 + 3 * 100.0  # the wall clock does include the evaluations
    records = read_metrics(tmp_path)
    lrs = [r["lr"] for r in records]
    # step k starts at progress k / 10: warm-up to the peak at 20 %, then linear decay to 0.1 at 100 %
    assert lrs[0] == 0.0  # 0 %: the warm-up starts from 0
    assert lrs[2] == pytest.approx(1.0)  # the peak at the end of the warm-up
    assert lrs[5] == pytest.approx(0.1 + 0.9 * (1 - (0.5 - 0.2) / 0.8))  # 50 %
    assert lr_at_progress(1.0, 1.0, 0.2, "linear", 0.1) == pytest.approx(0.1)  # 100 %: fully decayed
    assert lrs == [lr_at_progress(k / 10, 1.0, 0.2, "linear", 0.1) for k in range(10)]
    assert [r["train_seconds"] for r in records] == [float(k) for k in range(1, 11)]
    # the budget is spent: a further call on the run trains no more
    again = train(fresh(), source, timed(eval_every=3), tmp_path, slow_evaluate(clock), clock=clock)
    assert (again.stop_reason, again.step) == ("time_budget", 10)


def test_time_clocked_progress_bar_stops_at_the_budget_when_the_last_step_overshoots(tmp_path, capsys):
    import warnings

    clock = FakeClock()
    source = regression_source(collate=ticking(clock, 1.5))  # 7 steps of 1.5 s: 10.5 s against 10 s
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm warns ("clamping frac") when a bar passes its total
        result = train(fresh(), source, timed(progress=True), tmp_path, clock=clock)
    assert (result.stop_reason, result.step, result.train_seconds) == ("time_budget", 7, 10.5)
    assert "10.0/10.0" in capsys.readouterr().err


def test_time_schedule_does_not_depend_on_max_steps_which_stays_a_bound(tmp_path):
    clock = FakeClock()
    result = train(
        fresh(), regression_source(collate=ticking(clock, 1.0)), timed(max_steps=4), tmp_path, clock=clock
    )
    assert (result.stop_reason, result.step) == ("max_steps", 4)
    assert [r["lr"] for r in read_metrics(tmp_path)] == [
        lr_at_progress(k / 10, 1.0, 0.2, "linear", 0.1) for k in range(4)
    ]


def test_time_schedule_resumes_exactly(tmp_path):
    """Killed after the step-4 checkpoint (during step 7), resumed in a new call whose clock starts elsewhere:
    the same learning rates at the same training seconds, the same losses and the same final weights as an
    uninterrupted run. max_seconds is the total budget over both calls."""
    cfg = timed(max_seconds=12.0, checkpoint_every=4, keep_last=3, eval_every=3)
    clock = FakeClock()
    reference = fresh(dropout=0.2)
    source = regression_source(collate=ticking(clock, 1.0, then=add_noise))
    train(reference, source, cfg, tmp_path / "ref", slow_evaluate(clock), clock=clock)

    run = tmp_path / "run"
    clock = FakeClock(start=5.0)
    crashing = regression_source(collate=ticking(clock, 1.0, then=add_noise, crash_at=7))
    with pytest.raises(KeyboardInterrupt):
        train(fresh(dropout=0.2), crashing, cfg, run, slow_evaluate(clock), clock=clock)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000004"]
    clock = FakeClock(start=77.0)
    model = Regressor(dropout=0.2)  # other weights: everything must come from the checkpoint
    source = regression_source(collate=ticking(clock, 1.0, then=add_noise))
    result = train(model, source, cfg, run, slow_evaluate(clock), clock=clock)

    assert (result.step, result.stop_reason, result.train_seconds) == (12, "time_budget", 12.0)
    for name, tensor in weights(reference).items():
        assert torch.equal(model.state_dict()[name], tensor), name
    keys = ("step", "lr", "train_seconds", "loss")
    got = [[r[k] for k in keys] for r in read_metrics(run)]
    assert got == [[r[k] for k in keys] for r in read_metrics(tmp_path / "ref")]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(schedule_clock="wall"), "schedule_clock"),
        (dict(schedule_clock="time", warmup_steps=0), "max_seconds"),
        (dict(schedule_clock="time", max_seconds=5.0, warmup_steps=2), "warmup_steps"),
        (
            dict(schedule_clock="time", max_seconds=5.0, warmup_steps=0, warmup_fraction=1.0),
            "warmup_fraction",
        ),
        (dict(warmup_fraction=0.1), "warmup_fraction"),
    ],
)
def test_time_schedule_config_errors(overrides, field):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        config(**overrides)


# --------------------------------------------------------------------------------- damaged best checkpoint


def poison(path) -> None:
    """Write a NaN into the first tensor of a safetensors file without changing its size."""
    with ckpt.safe_open(path, "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    size = path.stat().st_size
    first = next(iter(tensors))
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, path, metadata=metadata)
    assert path.stat().st_size == size


def test_damaged_best_checkpoint_falls_back_to_the_best_valid_one(tmp_path, caplog):
    scores = iter([0.5, 0.9, 0.7, 0.8])  # evaluations at steps 2, 4, 6, 8; the best is step 4
    cfg = config(
        max_steps=8, eval_every=2, checkpoint_every=2, keep_last=3, early_stopping_metric="acc",
        restore_best=True,
    )  # fmt: skip
    first = train(fresh(), regression_source(), cfg, tmp_path, lambda m: {"acc": next(scores)})
    assert (first.best_step, [p.name for p in list_checkpoints(tmp_path)]) == (
        4,
        ["step-00000004", "step-00000006", "step-00000008"],
    )
    poison(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors")  # the latest is fine
    expected = read_checkpoint(tmp_path / "checkpoints" / "step-00000008").model_state
    for attempt in range(2):  # a retry does not fail either
        model = Regressor()
        with caplog.at_level("WARNING"):
            result = train(model, regression_source(), cfg, tmp_path, lambda m: {"acc": 0.0})
        assert (result.step, result.best_step, result.best_metric) == (8, 8, 0.8), attempt
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name]), name
    assert "falling back to the best valid one, step 8 (acc = 0.8)" in caplog.text
    assert "step-00000004/model.safetensors: tensor 'hidden.bias' holds 1 NaN/Inf" in caplog.text
    assert "set aside as damaged by an earlier call" in caplog.text  # the retry's message
    assert (tmp_path / "checkpoints" / "step-00000004.corrupt").is_dir()


def test_malloc_reuse_sets_and_restores_glibc_limits(tmp_path, monkeypatch):
    calls = []

    class FakeGlibc:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("malloc_trim", pad))
            return 1

    monkeypatch.setattr(loop, "_GLIBC", FakeGlibc())
    train(fresh(), regression_source(), config(max_steps=2, log_every=100), tmp_path / "off")
    assert calls == [("malloc_trim", 0)]  # only the trim at the final log line
    calls.clear()
    train(
        fresh(), regression_source(), config(max_steps=2, log_every=100, malloc_reuse=True), tmp_path / "on"
    )
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    assert calls == [
        ("mallopt", M_MMAP_MAX, 0),
        ("mallopt", M_TRIM_THRESHOLD, 2**31 - 1),
        ("malloc_trim", 0),
        ("mallopt", M_TRIM_THRESHOLD, 128 * 1024),
        ("mallopt", M_MMAP_MAX, 65536),
        ("malloc_trim", 0),
    ]
