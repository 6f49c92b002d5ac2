"""`seqbert train CONFIG --out DIR`: one command for every task; the YAML's top-level `job:` names which.

A job is a frozen config dataclass plus `run(config, out, data_dir) -> dict` (the summary it also writes to
`out/metrics.json`). The jobs are the one closed table below, not a plug-in registry: adding a task means
adding a line here. `run_job` owns everything every job shares: reading the YAML with `--set` overrides,
refusing an `--out` that is a file, the run-directory lock (a second writer gets a clear error), and the
run's identity (`out/run.json`: job and data section), so a run directory is never silently reused for
another job or other data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seqbert.config import ConfigError, config_to_dict, load_config

RUN_FILE = "run.json"


@dataclass(frozen=True)
class Job:
    config_cls: type
    run: Callable[[Any, Path, str | None], dict]
    doc: str


def jobs() -> dict[str, Job]:
    """The job table; imports lazily so `seqbert train` of a recommender never imports the text stack."""
    from seqbert.jobs import compare, item_rerank, learned_rerank, recommend, two_stage

    table = {
        "recommend": Job(recommend.RecommendJob, recommend.run, "BERT4Rec (cloze) or SASRec+ (next_item)"),
        **two_stage.JOBS,
        **item_rerank.JOBS,
        **learned_rerank.JOBS,
        **compare.JOBS,
    }
    try:
        from seqbert.jobs import text
    except ImportError:  # the text stack is optional: recommenders still train without `tokenizers`
        return table
    table.update(text.JOBS)
    return table


def read_job_name(path: str | Path) -> tuple[str, dict]:
    """The `job:` of a YAML config (a one-line error naming the file when absent or unknown)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or "job" not in data:
        raise ConfigError(f"{path}: missing top-level `job:` (one of {sorted(jobs())})")
    name = data["job"]
    table = jobs()
    if name not in table:
        raise ConfigError(f"{path}: job {name!r} is not one of {sorted(table)}")
    return name, data


def load_job_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, Any]:
    """(job name, its validated config) from a YAML file with `key=value` overrides."""
    name, _ = read_job_name(path)
    config = load_config(jobs()[name].config_cls, path, list(overrides), ignore=("job",))
    return name, config


def run_identity(name: str, config: Any) -> dict:
    """What a run directory is bound to: the job and its data section (the training settings may change
    between calls, e.g. a larger `train.max_steps` to train on)."""
    data = getattr(config, "data", None)
    return {"job": name, "data": config_to_dict(data) if dataclasses.is_dataclass(data) else data}


def bind_run_dir(out: Path, identity: dict) -> None:
    """Record `identity` in `out/run.json`, or check it equals the one already there."""
    from seqbert.training.checkpoint import atomic_file

    path = out / RUN_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: unreadable ({e}); remove it or choose another --out") from None
        if previous != identity:
            raise ConfigError(
                f"{out} was made for {json.dumps(previous, sort_keys=True)}, not "
                f"{json.dumps(identity, sort_keys=True)}; choose another --out"
            )
        return
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")


def run_job(
    config_path: str | Path,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    data_dir: str | None = None,
) -> dict:
    """Validate, lock `out`, bind it to this job and data, run the job; returns its summary."""
    name, config = load_job_config(config_path, overrides)
    return run_config(name, config, out, data_dir)


def run_config(name: str, config: Any, out: str | Path, data_dir: str | None = None) -> dict:
    """Run job `name` with a built config (the Python API's entry): the same checks and lock as `run_job`."""
    from seqbert.training.checkpoint import RunLock

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, expected a directory")
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        bind_run_dir(out, run_identity(name, config))
        return jobs()[name].run(config, out, data_dir)
