import json

import numpy as np
import pytest
import torch

from seqbert.evaluation.cli import main
from seqbert.evaluation.ranking import evaluate_ranking
from seqbert.evaluation.report import RunResult, write_report


def _runs_and_qrels(tmp_path, queries=31, docs=40, seed=0):
    """A good run (relevant docs near the top), a weak run (random order) and graded qrels."""
    rng = np.random.default_rng(seed)
    qrels, good, weak = [], [], []
    for q in range(queries):
        rel = rng.choice(docs, size=3, replace=False)
        qrels += [f"q{q} 0 d{d} {g}" for d, g in zip(rel, (1, 2, 1))]
        order = rng.permutation(docs)[:20]
        boosted = list(rel[:2]) + [d for d in order if d not in rel[:2]]
        good += [f"q{q} Q0 d{d} {i + 1} {20 - i} good" for i, d in enumerate(boosted[:20])]
        weak += [f"q{q} Q0 d{d} {i + 1} {20 - i} weak" for i, d in enumerate(order)]
    paths = {name: tmp_path / f"{name}.trec" for name in ("good", "weak")}
    paths["good"].write_text("\n".join(good) + "\n")
    paths["weak"].write_text("\n".join(weak) + "\n")
    (tmp_path / "qrels.txt").write_text("\n".join(qrels) + "\n")
    groups = "qid,group\n" + "\n".join(f"q{q},{'short' if q % 2 else 'long'}" for q in range(queries))
    (tmp_path / "groups.csv").write_text(groups + "\n")
    (tmp_path / "pop.csv").write_text(
        "docid,count\n" + "\n".join(f"d{d},{d * 3}" for d in range(docs)) + "\n"
    )
    return paths


def test_cli_writes_json_markdown_html_and_plots(tmp_path):
    paths = _runs_and_qrels(tmp_path)
    out = tmp_path / "report"
    args = [
        "evaluate",
        "--run",
        f"weak={paths['weak']}",
        "--run",
        f"good={paths['good']}",
        "--qrels",
        str(tmp_path / "qrels.txt"),
    ]
    args += ["--out", str(out), "--ks", "1,5,10", "--baseline", "weak", "--resamples", "200"]
    args += ["--query-groups", str(tmp_path / "groups.csv"), "--item-popularity", str(tmp_path / "pop.csv")]
    assert main(args) == 0
    data = json.loads((out / "metrics.json").read_text())
    good = data["runs"]["good"]
    assert good["n"] == 31 and good["metrics"]["hr@5"]["mean"] == 1.0  # two relevant docs at the top
    assert (
        good["metrics"]["ndcg@10"]["ci_low"]
        <= good["metrics"]["ndcg@10"]["mean"]
        <= good["metrics"]["ndcg@10"]["ci_high"]
    )
    assert "coverage@10" in good["extra"] and "arp@10" in good["metrics"]
    cmp = {c["metric"]: c for c in data["comparisons"]}
    assert cmp["hr@1"]["significant"] and cmp["hr@1"]["n"] == 31 and cmp["hr@1"]["run"] == "good"
    assert set(data["segments"]) == {"query group", "relevant-item popularity"}
    assert data["segments"]["query group"]["groups"]["long"]["n"] == 16
    md = (out / "report.md").read_text()
    assert "good (n=31)" in md and "p_holm=" in md and " *" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<img" in page and 'src="metric' not in page
    assert (out / "metric_at_k.png").stat().st_size > 1000


def test_cli_rejects_bad_arguments(tmp_path):
    paths = _runs_and_qrels(tmp_path)
    base = ["evaluate", "--qrels", str(tmp_path / "qrels.txt"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="NAME=FILE"):
        main(base + ["--run", str(paths["good"])])
    with pytest.raises(SystemExit, match="--baseline 'x'"):
        main(base + ["--run", f"a={paths['good']}", "--baseline", "x"])
    with pytest.raises(SystemExit, match="--ks"):
        main(base + ["--run", f"a={paths['good']}", "--ks", "0,5"])


def test_write_report_accepts_eval_results_and_checks_alignment(tmp_path):
    rng = np.random.default_rng(1)
    histories = [rng.choice(np.arange(1, 30), size=5, replace=False) for _ in range(50)]
    targets = rng.integers(1, 30, size=50)

    def random_model(seed):
        gen = torch.Generator().manual_seed(seed)
        return lambda h: torch.rand(len(h), 30, generator=gen)

    runs = {
        name: evaluate_ranking(random_model(seed), histories, targets, 30, exclude_ids=(0,))
        for name, seed in (("a", 0), ("b", 1))
    }
    seg = {"history length": np.where(np.arange(50) < 20, "<= 20", "> 20")}
    paths = write_report(runs, tmp_path, baseline="a", segments=seg, n_resamples=100)
    data = json.loads(paths["metrics.json"].read_text())
    assert (
        data["runs"]["b"]["extra"]["coverage@10"] > 0
        and data["runs"]["b"]["metadata"]["protocol"] == "full"
        and data["runs"]["b"]["metadata"]["exclude_seen"] == "strict"
    )
    assert data["segments"]["history length"]["groups"]["<= 20"]["n"] == 20
    with pytest.raises(ValueError, match="same metrics"):
        write_report({"a": RunResult({"hr@1": np.zeros(3)}), "b": RunResult({"hr@1": np.zeros(4)})}, tmp_path)
    with pytest.raises(ValueError, match="one per query"):
        write_report({"a": RunResult({"hr@1": np.zeros(3)})}, tmp_path, segments={"g": np.zeros(2)})


def test_report_imports_matplotlib_lazily_and_never_switches_the_backend(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from seqbert.evaluation.report import write_report\n"
        "assert 'matplotlib' not in sys.modules\n"
        "import matplotlib; matplotlib.use('svg')\n"
        f"write_report({{'a': {{'hr@1': np.ones(4), 'hr@5': np.ones(4)}}}}, {str(tmp_path)!r}, n_resamples=10)\n"
        "assert matplotlib.get_backend() == 'svg'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "metric_at_k.png").stat().st_size > 1000


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    from seqbert.cli import main as seqbert_main

    paths = _runs_and_qrels(tmp_path)
    base = ["evaluate", "--run", f"a={paths['good']}", "--qrels", str(tmp_path / "qrels.txt")]
    base += ["--out", str(tmp_path / "o")]
    cases = {
        "--depth must be >= 1": ["--depth", "-1"],
        "unknown measure 'nDCG'": ["--measures", "nDCG,RR"],
        "give one of them": ["--measures", "RR", "--ks", "5"],
        "expected a .json or .txt": ["--per-query", str(tmp_path / "pq.csv")],
    }
    for message, extra in cases.items():
        assert seqbert_main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    # through the seqbert command: a missing query under --strict is one line on stderr, exit 2
    (tmp_path / "more.txt").write_text((tmp_path / "qrels.txt").read_text() + "q999 0 d1 1\n")
    strict = ["evaluate", "--run", f"a={paths['good']}", "--qrels", str(tmp_path / "more.txt")]
    assert seqbert_main(strict + ["--out", str(tmp_path / "s"), "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 qrels query with no line in the run" in err
