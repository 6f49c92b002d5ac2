"""The jobs that read trained recommend runs (two_stage, item_rerank, compare), on a tiny synthetic BERT4Rec
run from `recipes/bert4rec_synthetic.yaml`, with their ML-1M recipes' settings: a Flat index over the
model's own vectors must reproduce its full ranking exactly, and compare must reproduce the run's own
metrics on the same candidates."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqbert.config import ConfigError, load_config
from seqbert.jobs import compare, item_rerank, learned_rerank, run_identity, run_job, two_stage

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "two_stage_ml1m.yaml": two_stage,
    "cross_rerank_ml1m.yaml": item_rerank,
    "compare_rec.yaml": compare,
    "learned_rerank_ml1m.yaml": learned_rerank,
}


def recipe(file: str, overrides: list[str]):
    """A recipe's config with `overrides`, built the way `seqbert train` builds it."""
    module = RECIPES[file]
    (job,) = module.JOBS.values()
    return load_config(job.config_cls, ROOT / "recipes" / file, overrides, ignore=("job",))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("b4r") / "run"
    # a short run: what these tests check holds for any model, trained or not
    settings = ["train.max_steps=20", "train.eval_every=20", "data.synthetic_users=300"]
    run_job(ROOT / "recipes" / "bert4rec_synthetic.yaml", out, settings)
    return out


@pytest.mark.parametrize("file", sorted(RECIPES))
def test_recipes_name_their_job_and_bind_runs_to_their_data(file):
    name = yaml.safe_load((ROOT / "recipes" / file).read_text())["job"]
    assert list(RECIPES[file].JOBS) == [name]
    cfg = recipe(file, [])
    identity = run_identity(name, cfg)
    assert identity["job"] == name and identity["data"] and "runs/" in json.dumps(identity["data"])


def test_flat_index_over_the_models_vectors_reproduces_full_ranking(run_dir, tmp_path):
    overrides = [
        f"data.model_dir={run_dir}",
        f"data.sasrec_dir={run_dir}",  # any recommender on the same vocabulary can retrieve
        "factory=Flat",
        "depths=[10,30]",
        "headline_depth=30",
        "latency_queries=3",
        "max_users=60",
        "progress=false",
    ]
    summary = two_stage.run(recipe("two_stage_ml1m.yaml", overrides), tmp_path)
    exact = summary["pipelines"]["bert4rec_ann@30"]
    # Flat IP over [e_i, b_i] with queries [t(h), 1] is the model's own top-K: reranking changes nothing
    assert exact["overlap@10"] == 1.0
    assert exact["stages"]["retrieve"]["ndcg@10"] == pytest.approx(exact["stages"]["full"]["ndcg@10"])
    assert exact["stages"]["rerank"]["ndcg@10"] == pytest.approx(exact["stages"]["full"]["ndcg@10"])
    assert set(summary["pipelines"]) == {
        f"{r}@{d}" for r in ("recent", "sasrec", "bert4rec_ann") for d in (10, 30)
    }
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["users"] == 60 and written["pipeline"].endswith("@30")
    assert written["by_pipeline"] == summary["by_pipeline"]
    assert (tmp_path / "report.txt").read_text().count("retriever") == 6


def test_config_errors_are_named(tmp_path):
    data = two_stage.TwoStageData(model_dir="runs/x")
    with pytest.raises(ValueError, match="retrievers"):
        two_stage.TwoStageJob(data=data, retrievers=("bm25",))
    with pytest.raises(ValueError, match="headline_depth"):
        two_stage.TwoStageJob(data=data, retrievers=("recent",), depths=(100,), headline_depth=200)
    with pytest.raises(ValueError, match="sasrec_dir"):
        two_stage.TwoStageJob(data=data)  # the sasrec retriever needs its run
    with pytest.raises(ConfigError, match="data"):
        recipe("two_stage_ml1m.yaml", ["data=null"])
    with pytest.raises(ValueError, match="pool"):
        item_rerank.ItemRerankJob(data=item_rerank.ItemRerankData("runs/x"), pool=15, num_negatives=15)
    with pytest.raises(ValueError, match="MostPop"):
        compare.CompareData(runs={"MostPop": "runs/x"})
    with pytest.raises(ValueError, match="baseline"):
        recipe("compare_rec.yaml", ["baseline=SASRec"])
    with pytest.raises(ValueError, match="protocol"):
        recipe("compare_rec.yaml", ["protocol=pop50"])


def test_a_model_directory_without_its_run_is_refused_by_name(run_dir, tmp_path):
    model_only = str(run_dir / "model")
    jobs = [
        (two_stage, two_stage.TwoStageJob(data=two_stage.TwoStageData(model_only), retrievers=("recent",))),
        (item_rerank, item_rerank.ItemRerankJob(data=item_rerank.ItemRerankData(model_only))),
        (compare, compare.CompareJob(data=compare.CompareData(runs={"A": model_only}))),
    ]
    for module, cfg in jobs:
        with pytest.raises(FileNotFoundError, match=f"{model_only}: no prepared data"):
            module.run(cfg, tmp_path)


def test_cli_pipeline_reports_stages(run_dir, tmp_path, capsys):
    from seqbert.cli import main

    args = ["pipeline", str(run_dir), "--retriever", "model", "--factory", "Flat", "--depth", "20",
            "--max-users", "50", "--latency-queries", "3", "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["overlap@10"] == 1.0 and set(report["stages"]) == {"retrieve", "rerank", "full"}
    assert "cost ratio" in capsys.readouterr().out
    assert main(["pipeline", str(tmp_path), "--max-users", "5"]) == 2  # not a run directory: a clear error


def test_item_rerank_job_trains_and_reports(run_dir, tmp_path):
    overrides = [f"data.model_dir={run_dir}", "train.max_steps=10", "train.warmup_steps=2", "train.log_every=5",
                 "train.progress=false", "train.precision=fp32", "train.checkpoint_every=0", "batch_size=16",
                 "cuts_per_user=2", "depth=20", "max_users=60", "latency_queries=3"]  # fmt: skip
    s = item_rerank.run(recipe("cross_rerank_ml1m.yaml", overrides), tmp_path)
    assert s["train_steps"] == 10 and s["users"] == 60 and 0 <= s["ndcg@10"] <= 1
    # both rerankers see the same BERT4Rec candidates: the same retrieval recall
    a, b = s["pipelines"]["cross"]["stages"], s["pipelines"]["bert4rec"]["stages"]
    assert a["retrieve"]["recall@20"] == b["retrieve"]["recall@20"]
    assert b["rerank"]["ndcg@10"] == pytest.approx(b["full"]["ndcg@10"])  # Flat: BERT4Rec reranks itself
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["ndcg@10"] == s["ndcg@10"]


@pytest.mark.parametrize("protocol", ["full", "pop100"])
def test_compare_job_reproduces_the_runs_own_metrics(run_dir, tmp_path, protocol):
    overrides = [f"data.runs={{A: {run_dir}, B: {run_dir}}}", f"protocol={protocol}", "baseline=A"]
    cfg = recipe("compare_rec.yaml", overrides)
    assert list(cfg.data.runs) == ["A", "B"]
    report = compare.run(cfg, tmp_path)
    own = json.loads((run_dir / "metrics.json").read_text())
    assert list(report["runs"]) == ["A", "B", "MostPop"]
    got = {name: {k: m["mean"] for k, m in r["metrics"].items()} for name, r in report["runs"].items()}
    for name, want in (("A", own[protocol]), ("B", own[protocol]), ("MostPop", own["mostpop"][protocol])):
        for key in ("hr@10", "ndcg@10", "mrr"):
            assert got[name][key] == pytest.approx(want[key], abs=1e-9), (name, key)
    if protocol == "pop100":  # the same 100 negatives the run drew, redrawn here with the same seed
        mine = np.load(tmp_path / "eval" / "negatives_pop100_seed42.npz")
        theirs = np.load(run_dir / "eval" / "negatives_pop100_seed42.npz")
        assert all(np.array_equal(mine[k], theirs[k]) for k in theirs.files)
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()


def test_seqbert_train_binds_the_run_to_the_runs_it_reads(run_dir, tmp_path, monkeypatch):
    import seqbert.jobs

    table = seqbert.jobs.jobs()
    table.update({**two_stage.JOBS, **item_rerank.JOBS, **compare.JOBS})  # as the lead's job table will
    monkeypatch.setattr(seqbert.jobs, "jobs", lambda: table)
    config, out = ROOT / "recipes" / "compare_rec.yaml", tmp_path / "cmp"
    run_job(config, out, [f"data.runs={{A: {run_dir}}}"])
    bound = json.loads((out / "run.json").read_text())
    assert bound == {"job": "compare", "data": {"runs": {"A": str(run_dir)}}}
    with pytest.raises(ConfigError, match="choose another --out"):
        run_job(config, out, [f"data.runs={{A: {run_dir}, B: {run_dir}}}"])


def test_compare_buckets_are_half_open_and_sort_in_order():
    labels = compare.buckets(np.array([0, 19, 20, 49, 50, 500]), (20, 50), "items")
    assert labels.tolist() == ["1: 0-19 items"] * 2 + ["2: 20-49 items"] * 2 + ["3: 50+ items"] * 2


def test_learned_rerank_reports_every_stage_with_paired_tests(run_dir, tmp_path):
    overrides = [
        f"data.first_stage={run_dir}",
        f"data.models=[{run_dir}]",
        "depth=20",
        "variants=[stats,models]",
        "reranker.epochs=2",
        "latency_queries=3",
        "max_users=80",
        "bootstrap=200",
        "progress=false",
    ]
    summary = learned_rerank.run(recipe("learned_rerank_ml1m.yaml", overrides), tmp_path / "out")
    assert set(summary["pipelines"]) == {"stats", "models"} and summary["users"] == {"fit": 80, "test": 80}
    for p in summary["pipelines"].values():
        assert 0 <= p["p_value"] <= p["p_holm"] <= 1
        assert p["delta_ci95"][0] <= p["delta_vs_best_single"] <= p["delta_ci95"][1]
        assert p["ndcg@10"] == pytest.approx(summary["best_single_ndcg@10"] + p["delta_vs_best_single"])
    report = summary["two_stage_report"]
    assert report["depth"] == 20 and report["stages"]["rerank"]["ndcg@10"] == pytest.approx(
        summary["ndcg@10"]
    )
    # the first stage's exact top-K is its full ranking: the retrieve stage equals the single stage
    assert report["stages"]["retrieve"]["ndcg@10"] == pytest.approx(report["stages"]["full"]["ndcg@10"])
    assert (tmp_path / "out" / "reranker" / "stats" / "model.safetensors").is_file()
    assert (
        json.loads((tmp_path / "out" / "metrics.json").read_text())["best_pipeline"]
        == summary["best_pipeline"]
    )


def test_learned_rerank_refuses_runs_on_other_data(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (other / "data.json").write_text(json.dumps({"fingerprint": "0000", "description": "other"}))
    cfg = recipe("learned_rerank_ml1m.yaml", [f"data.first_stage={run_dir}", f"data.models=[{other}]"])
    with pytest.raises(ValueError, match="different data"):
        learned_rerank.run(cfg, tmp_path / "out")
    with pytest.raises(ValueError, match="variants"):
        learned_rerank.LearnedRerankJob(data=cfg.data, variants=("magic",))


def test_learned_rerank_refuses_a_model_refit_on_the_validation_items(run_dir, tmp_path):
    refit = tmp_path / "refit"
    shutil.copytree(run_dir, refit)
    metrics = json.loads((refit / "metrics.json").read_text())
    (refit / "metrics.json").write_text(json.dumps(dict(metrics, refit={"train_steps": 20})))
    for first, models in ((refit, ()), (run_dir, (refit,))):
        cfg = recipe(
            "learned_rerank_ml1m.yaml",
            [f"data.first_stage={first}", f"data.models=[{','.join(map(str, models))}]"],
        )
        with pytest.raises(ValueError, match=f"{refit}: refit on the validation items"):
            learned_rerank.run(cfg, tmp_path / "out")
