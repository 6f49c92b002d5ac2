"""The ML-1M two-stage recipe on a tiny synthetic BERT4Rec run: a Flat index over the model's own vectors
must reproduce its full ranking exactly, and every pipeline is reported."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from seqbert.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bert4rec = _load("bert4rec_recipe_for_two_stage", "bert4rec.py")
two_stage = _load("two_stage_recipe", "two_stage_ml1m.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("b4r")
    cfg = load_config(
        bert4rec.RecipeConfig, ROOT / "recipes" / "bert4rec_synthetic.yaml", ["train.max_steps=150"]
    )
    bert4rec.main(cfg, out)
    return out


def test_flat_index_over_the_models_vectors_reproduces_full_ranking(run_dir, tmp_path):
    overrides = [
        f"model_dir={run_dir}",
        f"sasrec_dir={run_dir}",  # any recommender on the same vocabulary can retrieve
        "factory=Flat",
        "depths=[10,30]",
        "headline_depth=30",
        "latency_queries=5",
        "max_users=120",
        "progress=false",
    ]
    cfg = load_config(two_stage.TwoStageConfig, None, overrides)
    full = two_stage.main(cfg, tmp_path)
    exact = full["pipelines"]["bert4rec_ann@30"]
    # Flat IP over [e_i, b_i] with queries [t(h), 1] is the model's own top-K: reranking changes nothing
    assert exact["overlap@10"] == 1.0
    assert exact["stages"]["retrieve"]["ndcg@10"] == pytest.approx(exact["stages"]["full"]["ndcg@10"])
    assert exact["stages"]["rerank"]["ndcg@10"] == pytest.approx(exact["stages"]["full"]["ndcg@10"])
    assert set(full["pipelines"]) == {
        f"{r}@{d}" for r in ("recent", "sasrec", "bert4rec_ann") for d in (10, 30)
    }
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["users"] == 120 and summary["pipeline"].endswith("@30")
    assert (tmp_path / "report.txt").read_text().count("retriever") == 6


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="retrievers"):
        two_stage.TwoStageConfig(retrievers=("bm25",))
    with pytest.raises(ValueError, match="headline_depth"):
        two_stage.TwoStageConfig(depths=(100,), headline_depth=200)


def test_cli_pipeline_reports_stages(run_dir, tmp_path, capsys):
    from seqbert.cli import main

    args = ["pipeline", str(run_dir), "--retriever", "model", "--factory", "Flat", "--depth", "20",
            "--max-users", "50", "--latency-queries", "3", "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["overlap@10"] == 1.0 and set(report["stages"]) == {"retrieve", "rerank", "full"}
    assert "cost ratio" in capsys.readouterr().out
    assert main(["pipeline", str(tmp_path), "--max-users", "5"]) == 2  # not a run directory: a clear error


def test_cross_rerank_recipe_trains_and_reports(run_dir, tmp_path):
    cross = _load("cross_rerank_recipe", "cross_rerank_ml1m.py")
    overrides = [f"model_dir={run_dir}", "train.max_steps=20", "train.warmup_steps=2", "train.log_every=5", "train.progress=false",
                 "train.precision=fp32", "cuts_per_user=2", "depth=20", "max_users=60", "latency_queries=3"]  # fmt: skip
    cfg = load_config(cross.CrossRerankConfig, ROOT / "recipes" / "cross_rerank_ml1m.yaml", overrides)
    full = cross.main(cfg, tmp_path)
    s = full["summary"]
    assert s["train_steps"] == 20 and s["users"] == 60 and 0 <= s["ndcg@10"] <= 1
    # both rerankers see the same BERT4Rec candidates: the same retrieval recall
    a, b = full["pipelines"]["cross"]["stages"], full["pipelines"]["bert4rec"]["stages"]
    assert a["retrieve"]["recall@20"] == b["retrieve"]["recall@20"]
    assert b["rerank"]["ndcg@10"] == pytest.approx(b["full"]["ndcg@10"])  # Flat: BERT4Rec reranks itself
    assert (tmp_path / "model" / "model.safetensors").exists()
