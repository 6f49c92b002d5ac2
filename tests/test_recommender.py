"""The user surface for recommenders: custom CSV -> seqbert train -> recommend --all-users -> evaluate, the
Python API, run-directory safety and the one-line errors of the `seqbert` command."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

from seqbert import Recommender
from seqbert.cli import main
from seqbert.data.synthetic import markov_sequences
from seqbert.training.checkpoint import RunLock

TINY = """job: recommend
data:
  interactions: {log}
  user_col: user_id
  item_col: movie
  time_col: ts
  item_names: {names}
  item_names_id_col: movie
  item_names_name_col: title
model: {{hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32, dropout: 0.1, attention_dropout: 0.1}}
task: {{objective: next_item, max_len: 12}}
batch_size: 64
eval: {{batch_size: 128}}
train: {{max_steps: 60, lr: 0.01, eval_every: 30, early_stopping_metric: valid_ndcg@10, restore_best: true,
         precision: fp32, progress: false, log_every: 30}}
"""


def write_log(folder: Path, users: int = 300, items: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """A planted Markov log as a user's CSV would be: string ids, a timestamp column, shuffled rows."""
    seqs = markov_sequences(users, items, seed=seed)
    rows = [
        (f"u{int(u) * 7}", f"m{seqs.vocab.decode(int(i))}", t)
        for u, s in zip(seqs.users, seqs.items)
        for t, i in enumerate(s)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "movie", "ts"]).sample(frac=1.0, random_state=seed)
    log = folder / "log.csv"
    frame.to_csv(log, index=False)
    names = folder / "titles.csv"
    pd.DataFrame(
        {"movie": sorted(set(frame.movie)), "title": [f"Film {m}" for m in sorted(set(frame.movie))]}
    ).to_csv(names, index=False)
    return log, names


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("custom")
    log, names = write_log(folder)
    config = folder / "tiny.yaml"
    config.write_text(TINY.format(log=log, names=names))
    run = folder / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    return folder, config, run


def test_custom_csv_round_trip_reproduces_metrics_json(trained, tmp_path):
    _, _, run = trained
    recs, qrels = tmp_path / "recs.trec", tmp_path / "qrels.txt"
    assert main(["recommend", str(run), "--all-users", "--split", "test", "--k", "10",
                 "--out", str(recs), "--qrels-out", str(qrels), "--batch-size", "50"]) == 0  # fmt: skip
    assert (
        main(
            [
                "evaluate",
                "--run",
                f"m={recs}",
                "--qrels",
                str(qrels),
                "--ks",
                "10",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())["runs"]["m"]["metrics"]
    full = json.loads((run / "metrics.json").read_text())["full"]
    assert evaluated["ndcg@10"]["mean"] == pytest.approx(full["ndcg@10"], abs=1e-9)
    assert evaluated["hr@10"]["mean"] == pytest.approx(full["hr@10"], abs=1e-9)


def test_shards_partition_the_users_and_formats_agree(trained, tmp_path):
    _, _, run = trained
    whole = tmp_path / "all.csv"
    assert main(["recommend", str(run), "--all-users", "--split", "full", "--out", str(whole)]) == 0
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.parquet"
        assert (
            main(
                [
                    "recommend",
                    str(run),
                    "--all-users",
                    "--split",
                    "full",
                    "--shard",
                    f"{i}/3",
                    "--out",
                    str(part),
                ]
            )
            == 0
        )
        parts.append(pl.read_parquet(part))
    merged = pl.concat(parts)
    expected = pl.read_csv(whole, schema_overrides={"user": pl.String, "item": pl.String})
    assert merged.select("user", "item", "rank").equals(expected.select("user", "item", "rank"))
    assert merged["score"].to_numpy() == pytest.approx(expected["score"].to_numpy(), abs=1e-5)
    assert merged["user"].n_unique() == 300 and merged.group_by("user").len()["len"].max() == 10


def test_python_api_fit_recommend_save_load(tmp_path):
    log, _ = write_log(tmp_path, users=200, items=40, seed=1)
    frame = pd.read_csv(log, dtype=str)
    rec = Recommender(
        hidden_size=16, num_layers=1, intermediate_size=32, max_len=12, schedule_clock="steps", max_steps=40,
        warmup_steps=5, warmup_fraction=0.0, eval_every=20, precision="fp32", progress=False, window_stride=0,
    ).fit(frame, user_col="user_id", item_col="movie", time_col="ts", out=tmp_path / "run")  # fmt: skip
    top = rec.recommend(users=["u0", "u7"], k=5)
    assert top.columns == ["user", "item", "rank", "score"]
    assert top.height == 10 and top["rank"].to_list() == [1, 2, 3, 4, 5] * 2
    history = frame[frame.user_id == "u0"].sort_values("ts", key=lambda s: s.astype(int)).movie.tolist()
    assert not set(top.filter(pl.col("user") == "u0")["item"]) & set(history)  # seen items excluded
    mine = rec.recommend(histories={"me": history[:3]}, k=5)
    rec.save(tmp_path / "saved")
    again = Recommender.load(tmp_path / "saved")
    assert again.recommend(histories={"me": history[:3]}, k=5).equals(mine)
    with pytest.raises(KeyError, match="unknown item"):
        rec.recommend(histories=[["not-an-item"]])
    with pytest.raises(KeyError, match="unknown users"):
        rec.recommend(users=["nobody"])
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend(users=["u0"], k=0)


def test_item_names_reach_recommendations(trained, capsys):
    _, _, run = trained
    assert main(["recommend", str(run), "--items", "m1", "m2", "--k", "3"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(x["name"] == f"Film {x['item']}" for x in lines)


def test_run_directory_refuses_other_data(trained, tmp_path, capsys):
    folder, config, run = trained
    other_log, names = write_log(tmp_path, users=120, items=30, seed=5)
    other = tmp_path / "other.yaml"
    other.write_text(TINY.format(log=other_log, names=names))
    assert main(["train", str(other), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(other_log) in err and str(folder / "log.csv") in err and len(err.strip().splitlines()) == 1


def test_same_path_with_changed_content_is_refused(tmp_path, capsys):
    log, names = write_log(tmp_path, users=120, items=30, seed=2)
    config = tmp_path / "c.yaml"
    config.write_text(TINY.format(log=log, names=names))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--set", "train.max_steps=2"]) == 0
    write_log(tmp_path, users=120, items=30, seed=3)  # the same file name, other rows
    assert main(["train", str(config), "--out", str(out), "--set", "train.max_steps=4"]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_a_locked_run_directory_refuses_a_second_writer(trained, capsys):
    _, config, run = trained
    with RunLock(run):
        assert main(["train", str(config), "--out", str(run)]) == 2
    assert "in use by another process" in capsys.readouterr().err


def _nan_model(run: Path, tmp: Path) -> Path:
    bad = tmp / "bad-run"
    bad.mkdir()
    (bad / "model").mkdir()
    for f in (run / "model").iterdir():
        (bad / "model" / f.name).write_bytes(f.read_bytes())
    tensors = load_file(bad / "model" / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 2)
    tensors[name] = torch.full_like(tensors[name], float("nan"))  # same size: only the values change
    save_file(tensors, bad / "model" / "model.safetensors", metadata={"format": "pt"})
    return bad


def test_expected_errors_are_one_line_with_exit_code_2(trained, tmp_path):
    _, config, run = trained
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        ["train", str(config), "--out", str(tmp_path / "r1"), "--set", "train.lr=abc"],
        ["train", str(config), "--out", str(tmp_path / "r2"), "--set", "model.hiden=3"],
        ["train", str(config), "--out", str(tmp_path / "r3"), "--set", "batch_size=-4"],
        ["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r4")],
        ["train", str(config), "--out", str(a_file)],
        [
            "train",
            "recipes/sasrec_ml1m.yaml",
            "--out",
            str(tmp_path / "r5"),
            "--data-dir",
            str(tmp_path / "nowhere"),
        ],
        ["recommend", str(run), "--items", "m1", "--k", "-5"],
        ["recommend", str(run), "--items", "m1", "no-such-item"],
        ["recommend", str(tmp_path / "no-run"), "--items", "m1"],
        ["recommend", str(run), "--all-users"],
        ["recommend", str(run), "--all-users", "--out", str(tmp_path / "x.trec"), "--shard", "3/2"],
        ["recommend", str(_nan_model(run, tmp_path)), "--items", "m1"],
        ["pipeline", str(run), "--depth", "0"],
    ]
    root = Path(__file__).resolve().parents[1]
    for argv in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "seqbert.cli", *argv], capture_output=True, text=True, cwd=root
        )
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"seqbert {argv[0]}: error:"), (argv, proc.stderr[-2000:])
