"""The training loop: one explicit loop from batches to optimizer steps, checkpoints and evaluations.

`train(model, source, config, run_dir, evaluate)` trains any nn.Module whose `forward(batch)` returns an
object with a scalar `.loss` (PreTrainingOutput, ClassifierOutput, ...). Per optimizer step: set the LR
from the step (`lr_at`) or from the spent share of a time budget (`lr_at_progress`), run `grad_accum`
micro-batches under autocast, clip, step; then log, maybe evaluate, maybe checkpoint. Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DDP and every rank
reads its slice of each global batch, so the optimizer sees the same global batch whatever the world size.

Resume is exact: a checkpoint holds the model, AdamW's moments, the step and the training seconds (the LR
is a function of one of them), the data position (epoch, batch index; batches are pure functions of those)
and every RNG state (dropout).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from seqbert.training.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    Checkpoint,
    CheckpointError,
    checkpoint_dir,
    find_resumable,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    read_json,
    read_model_file,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    truncate_metrics,
)
from seqbert.training.data import Batch, BatchSource
from seqbert.training.optim import SCHEDULES, configure_optimizer, lr_at, lr_at_progress
from seqbert.training.precision import (
    PRECISIONS,
    autocast,
    barrier,
    grad_scaler,
    init_distributed,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], dict[str, float]]
Clock = Callable[[], float]  # seconds from an arbitrary origin; tests pass a fake one
SCHEDULE_CLOCKS = ("steps", "time")


@dataclass(frozen=True)
class TrainConfig:
    """How to train; every field is validated on construction. 0 turns an `*_every` schedule off.

    `checkpoint_every=0` still writes a checkpoint when training stops and whenever the early-stopping
    metric improves (that checkpoint is kept as the best). `patience` counts evaluations without improvement.

    Two clocks drive the LR schedule (`schedule_clock`):
    - "steps" (default): warm-up over `warmup_steps`, decay over `max_steps` (`lr_at`). `max_seconds`, if
      set, only bounds this call's wall-clock time, evaluations included (a resumed call gets a fresh budget).
    - "time": the schedule's progress is train_seconds / `max_seconds` (`lr_at_progress`), warm-up over the
      first `warmup_fraction` of it, so a run on any machine ends with the LR decayed to its floor.
      `max_seconds` is then the TOTAL training budget over all calls (a resumed call continues from the
      seconds saved in its checkpoint) and training stops when it is spent; `max_steps` stays an upper bound.
      The clock counts training only: seconds spent in `evaluate` are excluded (they still count in the
      wall-clock `seconds` of metrics.jsonl), so that evaluating more often does not shorten training.
    """

    max_steps: int
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0  # schedule_clock="steps" only
    warmup_fraction: float = 0.0  # schedule_clock="time" only: share of max_seconds spent warming up
    schedule: str = "linear"  # one of SCHEDULES
    schedule_clock: str = "steps"  # one of SCHEDULE_CLOCKS: what the schedule's progress counts
    min_lr_ratio: float = 0.0  # the LR decays to min_lr_ratio * lr
    grad_accum: int = 1
    clip_norm: float | None = 1.0  # None: no clipping (the norm is still logged)
    device: str = "auto"
    precision: str = "auto"  # one of PRECISIONS
    compile: bool = False
    malloc_reuse: bool = (
        False  # CPU + glibc: reuse freed heap pages, less kernel time, more RSS (_malloc_reuse)
    )
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    eval_every: int = 0  # also evaluated once when training stops, whenever `evaluate` is given
    early_stopping_metric: str | None = None  # a key of evaluate()'s dict; defines the best checkpoint
    early_stopping_mode: str = "max"  # "max" or "min"
    patience: int = 0  # 0: never stop early
    checkpoint_every: int = 0
    keep_last: int = 2
    max_seconds: float | None = None
    resume: bool = True
    restore_best: bool = False  # load the best checkpoint's weights into the model before returning
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("max_steps", "grad_accum", "log_every", "keep_last")
        non_negative = ("warmup_steps", "eval_every", "patience", "checkpoint_every", "seed")
        for name in positive + non_negative:
            value = getattr(self, name)
            low = 1 if name in positive else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {low}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.adam_eps > 0:
            raise ValueError(f"TrainConfig.adam_eps must be > 0, got {self.adam_eps!r}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"TrainConfig.warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"TrainConfig.clip_norm must be > 0 or None, got {self.clip_norm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.early_stopping_mode not in ("max", "min"):
            raise ValueError(
                f"TrainConfig.early_stopping_mode must be 'max' or 'min', got {self.early_stopping_mode!r}"
            )
        if (self.patience > 0 or self.restore_best) and not self.early_stopping_metric:
            raise ValueError(
                "TrainConfig.early_stopping_metric must be set when patience > 0 or restore_best"
            )
        if self.patience > 0 and self.eval_every == 0:
            raise ValueError(
                "TrainConfig.eval_every must be > 0 when patience > 0 (patience counts evaluations)"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"TrainConfig.max_seconds must be > 0 or None, got {self.max_seconds!r}")
        if self.schedule_clock not in SCHEDULE_CLOCKS:
            raise ValueError(
                f"TrainConfig.schedule_clock must be one of {SCHEDULE_CLOCKS}, got {self.schedule_clock!r}"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"TrainConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if self.schedule_clock == "time":
            if self.max_seconds is None:
                raise ValueError("TrainConfig.max_seconds must be set when schedule_clock is 'time'")
            if self.warmup_steps:
                raise ValueError(
                    f"TrainConfig.warmup_steps ({self.warmup_steps}) counts steps, but schedule_clock is "
                    "'time': set warmup_steps to 0 and warm up with warmup_fraction (e.g. 0.05)"
                )
        elif self.warmup_fraction:
            raise ValueError(
                f"TrainConfig.warmup_fraction ({self.warmup_fraction}) needs schedule_clock 'time'; "
                "with schedule_clock 'steps' use warmup_steps"
            )


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs; saved in each checkpoint's state.json."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch: int = 0  # the next global batch index within `epoch`
    seconds: float = 0.0  # wall-clock seconds over all calls, evaluations included
    train_seconds: float = 0.0  # the same without the seconds spent in evaluate(): the "time" schedule clock
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one
    last_eval: dict[str, float] = field(default_factory=dict)
    eval_step: int | None = None  # the step `last_eval` was measured at
    stop_reason: str | None = None


@dataclass
class TrainResult:
    step: int
    stop_reason: str  # "max_steps" | "early_stopping" | "time_budget"
    best_metric: float | None
    best_step: int | None
    last_eval: dict[str, float]
    seconds: float  # wall-clock, over all calls
    train_seconds: float  # without evaluations, over all calls
    checkpoint: Path | None  # the last checkpoint written or resumed from


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/Inf loss or gradient norm; the last good checkpoint is left as it was."""


def train(
    model: nn.Module,
    source: BatchSource,
    config: TrainConfig,
    run_dir: str | Path,
    evaluate: Evaluate | None = None,
    clock: Clock = time.perf_counter,
) -> TrainResult:
    """Train `model` in place; checkpoints and metrics.jsonl go to `run_dir`, resumed from when present.

    `evaluate(model) -> {"name": value}` runs under torch.no_grad() with the model in eval mode, on rank 0.
    `clock() -> seconds` is the only source of time (budgets, the "time" schedule, logged seconds).
    """
    if config.early_stopping_metric and evaluate is None:
        raise ValueError("TrainConfig.early_stopping_metric is set but no evaluate callback was given")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    rank, world_size, owns_group = init_distributed(device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        with _malloc_reuse(config.malloc_reuse and device.type == "cpu"):
            return _train(
                model, source, config, Path(run_dir), evaluate, clock, device, precision, rank, world_size
            )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        if owns_group:
            dist.destroy_process_group()


def _train(
    model: nn.Module,
    source: BatchSource,
    config: TrainConfig,
    run_dir: Path,
    evaluate: Evaluate | None,
    clock: Clock,
    device: torch.device,
    precision: str,
    rank: int,
    world_size: int,
) -> TrainResult:
    model.to(device)
    optimizer = configure_optimizer(model, config.lr, config.weight_decay, config.betas, config.adam_eps)
    scaler = grad_scaler(device, precision)
    state = TrainState()

    # ---- resume from the newest good checkpoint, or start fresh
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    if not config.resume and list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints; set resume=True or use a new run directory")
    checkpoint = find_resumable(run_dir, quarantine=rank == 0) if config.resume else None
    barrier(world_size)
    if checkpoint is None:
        seed_everything(config.seed + rank)  # a different dropout stream per rank, as in nanoGPT
    else:
        _apply_checkpoint(checkpoint, model, optimizer, scaler, state, rank)
        log.info("resumed from %s (step %d)", checkpoint.path, state.step)
        _verify_best(run_dir, checkpoint, state, config, rank == 0)
    last_checkpoint = checkpoint.path if checkpoint is not None else None
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:  # drop the lines an interrupted run wrote after its last checkpoint
        truncate_metrics(metrics_path, state.step)

    train_model: nn.Module = torch.compile(model) if config.compile else model
    ddp = None
    if world_size > 1:
        ddp = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
        train_model = ddp

    # ---- the loop: one iteration per optimizer step
    stream = _batch_stream(source, state.epoch, state.batch, rank, world_size)
    timed = config.schedule_clock == "time"
    # a time-clocked run counts training seconds against its budget (max_steps is then only an upper bound)
    bar = tqdm(
        total=config.max_seconds if timed else config.max_steps,
        initial=round(state.train_seconds, 1) if timed else state.step,
        unit="s" if timed else "it",
        disable=not (config.progress and rank == 0),
        desc="train",
    )
    t_start, seconds_before = clock(), state.seconds
    t_log, t_mark, items = t_start, t_start, 0  # t_mark: where the training clock last read
    model.train()
    while state.stop_reason is None and state.step < config.max_steps:
        if timed and state.train_seconds >= config.max_seconds:  # resumed with the budget already spent
            state.stop_reason = "time_budget"
            break
        lr = _learning_rate(config, state)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(config.grad_accum):
            state.epoch, index, batch = next(stream)
            state.batch = index + 1
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            items += _count_items(batch)
            # DDP all-reduces gradients on the last micro-batch only; the others accumulate locally
            sync = ddp is None or micro == config.grad_accum - 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with autocast(device, precision):
                    loss = train_model(batch).loss
                scaler.scale(loss / config.grad_accum).backward()  # mean over micro-batches
            loss_sum += loss.detach().float()
        if state.batch >= source.num_batches(state.epoch):
            state.epoch, state.batch = state.epoch + 1, 0

        # one all-reduce carries the mean loss, the mean training seconds of this step and whether any rank
        # ran out of time, so all ranks agree on the LR schedule and on when to stop
        now = clock()
        step_seconds, t_mark = now - t_mark, now
        out_of_time = config.max_seconds is not None and not timed and now - t_start >= config.max_seconds
        flags = torch.stack([loss_sum / config.grad_accum, torch.tensor(float(out_of_time), device=device)])
        if world_size > 1:
            flags = torch.cat([flags, torch.tensor([step_seconds], device=device)])
            dist.all_reduce(flags)
            flags[0] /= world_size
            step_seconds = flags[2].item() / world_size
        loss_value, out_of_time = flags[0].item(), flags[1].item() > 0
        state.train_seconds += step_seconds
        if timed:
            out_of_time = state.train_seconds >= config.max_seconds
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(_diverged("loss", loss_value, state, last_checkpoint))
        if scaler.is_enabled():
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        max_norm = config.clip_norm if config.clip_norm is not None else math.inf
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
        if not math.isfinite(grad_norm) and not scaler.is_enabled():  # fp16: the scaler skips such steps
            raise NonFiniteLossError(_diverged("gradient norm", grad_norm, state, last_checkpoint))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1

        # ---- log, evaluate, checkpoint
        now = clock()
        state.seconds = seconds_before + now - t_start
        stop = "max_steps" if state.step >= config.max_steps else "time_budget" if out_of_time else None
        # items/s over all ranks since the last log
        throughput = round(items * world_size / max(now - t_log, 1e-9), 1)
        record = dict(step=state.step, epoch=state.epoch, loss=loss_value, lr=lr, grad_norm=grad_norm)
        record |= dict(seconds=round(state.seconds, 3), train_seconds=round(state.train_seconds, 3))
        record |= dict(items_per_s=throughput)
        record |= _memory_mb()
        improved = False
        if evaluate is not None and (stop or (config.eval_every and state.step % config.eval_every == 0)):
            t_eval = clock()
            record["eval"] = state.last_eval = _evaluate(evaluate, model, rank, world_size)
            state.eval_step = state.step
            t_mark += clock() - t_eval  # evaluation time is not training time
            if config.early_stopping_metric:
                value = _metric(state.last_eval, config.early_stopping_metric)
                if _is_better(value, state.best_metric, config.early_stopping_mode):
                    state.best_metric, state.best_step, state.bad_evals, improved = value, state.step, 0, True
                else:
                    state.bad_evals += 1
                    if config.patience and state.bad_evals >= config.patience and stop is None:
                        stop = "early_stopping"
        if "eval" in record or stop or state.step % config.log_every == 0:
            if rank == 0:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            t_log, items = now, 0
            _release_freed_memory()
        # the last timed step overshoots the budget: the bar stops at its total (tqdm warns past it)
        bar.update(min(round(step_seconds, 3), max(bar.total - bar.n, 0)) if timed else 1)
        bar.set_postfix(step=state.step, loss=f"{loss_value:.4f}", items_s=throughput, refresh=False)
        state.stop_reason = stop
        if stop or improved or (config.checkpoint_every and state.step % config.checkpoint_every == 0):
            last_checkpoint = _save(run_dir, model, optimizer, scaler, state, config, rank, world_size)
    bar.close()

    if config.restore_best and state.best_step is not None:
        try:
            best = read_model_file(checkpoint_dir(run_dir, state.best_step) / MODEL_FILE)
        except CheckpointError as e:  # damaged since it was verified: fall back as on resume
            log.warning("the best checkpoint is damaged: %s", e)
            best = _fall_back_to_best_valid(run_dir, state, config)
        if best is not None:
            model.load_state_dict(best)
    return TrainResult(
        step=state.step,
        stop_reason=state.stop_reason or "max_steps",
        best_metric=state.best_metric,
        best_step=state.best_step,
        last_eval=state.last_eval,
        seconds=state.seconds,
        train_seconds=state.train_seconds,
        checkpoint=last_checkpoint,
    )


# ------------------------------------------------------------------------------------------------- helpers


def _learning_rate(config: TrainConfig, state: TrainState) -> float:
    """The LR of the next step: a function of the steps taken, or of the training seconds spent."""
    c = config
    if c.schedule_clock == "time":
        progress = state.train_seconds / c.max_seconds
        return lr_at_progress(progress, c.lr, c.warmup_fraction, c.schedule, c.min_lr_ratio)
    return lr_at(state.step, c.lr, c.warmup_steps, c.max_steps, c.schedule, c.min_lr_ratio)


def _load_glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim, libc.mallopt  # noqa: B018 -- glibc only; absent on macOS / musl
        return libc
    except (OSError, AttributeError):
        return None


_GLIBC = _load_glibc()
# mallopt parameters (glibc malloc.h) and their defaults, restored when training ends
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_MALLOPT_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}


def _memory_mb() -> dict[str, float]:
    """This process's resident memory now and its high-water mark so far, in MB (Linux; {} elsewhere).

    Logged before the trim at each log line, so a rising `rss_mb` between logs shows heap growth and
    `peak_rss_mb` says when the run's peak happened (training step, evaluation or checkpoint).
    """
    try:
        import resource

        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (ImportError, OSError, IndexError, ValueError):
        return {}
    rss = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    # KiB on Linux; the kernel folds the current RSS into its high-water mark lazily, hence the max
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss)
    return {"rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only).

    Batches whose tensors change size every step (the number of masked rows M varies) fragment glibc's
    heap: after large frees its mmap threshold rises, so later large buffers come from the heap and RSS
    grows without bound (measured on BERT4Rec/ML-1M: ~5 MB per step, several GB over a run). Trimming at
    each log keeps RSS flat; a fixed low mmap threshold would too, but made steps ~2x slower here.
    """
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)


@contextlib.contextmanager
def _malloc_reuse(enabled: bool) -> Iterator[None]:
    """With `TrainConfig.malloc_reuse` (glibc only): serve every block from the heap and never shrink it on
    free, so each step reuses the pages of the last one. The default limits come back when training ends
    (glibc's dynamic mmap threshold, off once mallopt is called, stays off).

    glibc serves blocks above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps them on free.
    A full-catalogue loss makes several (M, V) temporaries of ~350 MB per step (SASRec+ on ML-1M), so every
    step faults ~1.6 GB of new pages in: 26 % of training CPU time went to the kernel. With M_MMAP_MAX = 0
    it fell to 5 % and CPU time per step by 19 %, but peak RSS rose from 2.35 to 3.68 GB (variable-size
    blocks fragment the heap): benchmarks/RESULTS.md, "Allocation churn". Hence opt-in.
    """
    if not enabled or _GLIBC is None:
        yield
        return
    _GLIBC.mallopt(_M_MMAP_MAX, 0)
    _GLIBC.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # only the explicit malloc_trim at each log gives back
    try:
        yield
    finally:
        for param, value in _MALLOPT_DEFAULTS.items():
            _GLIBC.mallopt(param, value)
        _GLIBC.malloc_trim(0)


def _batch_stream(
    source: BatchSource, epoch: int, start: int, rank: int, world_size: int
) -> Iterator[tuple[int, int, Batch]]:
    """(epoch, batch index, this rank's batch) from (epoch, start) on, across epoch boundaries, forever."""
    while True:
        if source.num_batches(epoch) == 0:
            raise ValueError(f"the batch source has no batches in epoch {epoch}")
        for index, batch in enumerate(source.batches(epoch, start, rank, world_size), start):
            yield epoch, index, batch
        epoch, start = epoch + 1, 0


def _count_items(batch: Batch) -> int:
    tensor = batch["input_ids"] if "input_ids" in batch else next(iter(batch.values()))
    return tensor.shape[0]


def _diverged(what: str, value: float, state: TrainState, last_checkpoint: Path | None) -> str:
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint exists yet"
    return (
        f"{what} is {value} at step {state.step + 1} (epoch {state.epoch}, next batch {state.batch}); "
        f"training stopped without saving, {kept}. Lower the learning rate or check the data."
    )


def _metric(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise KeyError(
            f"TrainConfig.early_stopping_metric {name!r} is not among evaluate()'s keys {sorted(metrics)}"
        )
    return metrics[name]


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _evaluate(evaluate: Evaluate, model: nn.Module, rank: int, world_size: int) -> dict[str, float]:
    """Run `evaluate` on rank 0 and share its metrics, so every rank takes the same early-stopping decision."""
    metrics = None
    if rank == 0:
        model.eval()
        with torch.no_grad():
            metrics = {str(k): float(v) for k, v in evaluate(model).items()}
        model.train()
    if world_size > 1:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


def _save(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    config: TrainConfig,
    rank: int,
    world_size: int,
) -> Path:
    """Rank 0 writes the checkpoint with every rank's RNG states, then prunes to the last N and the best."""
    rngs = [rng_state()]
    if world_size > 1:
        rngs = [None] * world_size
        dist.all_gather_object(rngs, rng_state())
    if rank == 0:
        extra = {
            "train_state": dataclasses.asdict(state),
            "config": dataclasses.asdict(config),
            "rng": rngs,
            "scaler": scaler.state_dict(),
        }
        save_checkpoint(run_dir, state.step, model, optimizer, extra)
        prune_checkpoints(
            run_dir, config.keep_last, {state.best_step} if state.best_step is not None else set()
        )
    barrier(world_size)
    return checkpoint_dir(run_dir, state.step)


def _apply_checkpoint(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    rank: int,
) -> None:
    saved = checkpoint.state
    try:
        model.load_state_dict(checkpoint.model_state)
        optimizer.load_state_dict(checkpoint.optimizer_state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"checkpoint {checkpoint.path} does not match this model or optimizer: {e}") from e
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    for key, value in saved["train_state"].items():
        setattr(state, key, value)
    if "train_seconds" not in saved["train_state"]:  # a checkpoint from before the two clocks
        state.train_seconds = state.seconds
    if state.stop_reason != "early_stopping":
        state.stop_reason = None  # a time budget or max_steps (now raised) stop is resumed past
    rngs = saved["rng"]
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    else:
        log.warning("checkpoint %s has no RNG state for rank %d; seeding it afresh", checkpoint.path, rank)
        seed_everything(saved["config"]["seed"] + rank)


def _verify_best(
    run_dir: Path, resumed: Checkpoint, state: TrainState, config: TrainConfig, rank0: bool
) -> None:
    """On resume, read the best checkpoint too (it is restored at the end and kept by pruning); if it is
    damaged, quarantine it and make the best valid checkpoint the best, so a retry does not fail again."""
    if state.best_step is None or state.best_step == resumed.step:
        return
    best = checkpoint_dir(run_dir, state.best_step)
    quarantined = best.with_name(best.name + ".corrupt")
    if not best.exists() and quarantined.exists():
        log.warning("the best checkpoint was set aside as damaged by an earlier call: %s", quarantined)
        _fall_back_to_best_valid(run_dir, state, config)
        return
    try:
        read_checkpoint(best)
        return
    except CheckpointError as e:
        log.warning("the best checkpoint is damaged: %s", e)
    if rank0 and best.is_dir():
        os.replace(best, quarantined)
    _fall_back_to_best_valid(run_dir, state, config)


def _fall_back_to_best_valid(
    run_dir: Path, state: TrainState, config: TrainConfig
) -> dict[str, torch.Tensor] | None:
    """Make the best checkpoint that reads cleanly the best (`state.best_*`) and return its weights; None,
    with the best forgotten, when no valid checkpoint carries an evaluation of its own step.

    A checkpoint's score is `early_stopping_metric` of the evaluation made at its own step (the `last_eval`
    of its state.json when `eval_step` is its step; older checkpoints: `best_metric` when it was the best).
    """
    damaged = state.best_step
    scored = []
    for path in list_checkpoints(run_dir):
        try:
            saved = read_json(path / STATE_FILE)["train_state"]
        except (CheckpointError, KeyError, TypeError):
            continue
        step = int(saved.get("step", -1))
        if step == damaged:
            continue
        if saved.get("eval_step") == step and config.early_stopping_metric in saved.get("last_eval", {}):
            scored.append((saved["last_eval"][config.early_stopping_metric], step, path))
        elif saved.get("best_step") == step and saved.get("best_metric") is not None:
            scored.append((saved["best_metric"], step, path))
    scored = [c for c in scored if not math.isnan(c[0])]
    scored.sort(key=lambda c: (c[0] if config.early_stopping_mode == "max" else -c[0], c[1]), reverse=True)
    for value, step, path in scored:
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s", e)
            continue
        log.warning(
            "the best checkpoint (step %s) is damaged; falling back to the best valid one, step %d (%s = %s)",
            damaged, step, config.early_stopping_metric, value,
        )  # fmt: skip
        state.best_step, state.best_metric = step, value
        return checkpoint.model_state
    log.warning(
        "the best checkpoint (step %s) is damaged and no other checkpoint has an evaluation of its own step; "
        "keeping the current weights", damaged,
    )  # fmt: skip
    state.best_step = state.best_metric = None
    return None
