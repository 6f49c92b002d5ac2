"""Each text recipe (a YAML config) runs end to end through `seqbert.jobs.run_job` on tiny overrides and data
written to a temp dir, with a pinned loss; expected errors are one line and exit code 2 from the CLI."""

import json
import random
from pathlib import Path

import pytest
import torch

from seqbert.cli import main as cli
from seqbert.data.text import load_tokenizer
from seqbert.jobs import run_job
from seqbert.jobs.text_pretrain import D2LLoss
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForPreTraining
from seqbert.model.hf import save_hf_model
from seqbert.tasks.text import minilm_dir
from seqbert.text_model import TextModel

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
WORDS = "the a cat dog bird sat ran flew on over under mat log house red big small good bad movie".split()
TINY_TRAIN = dict(max_steps=6, lr=0.003, warmup_steps=1, precision="fp32", log_every=2, progress=False)


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data directory laid out like the real one: wikitext-2, sst2, mrpc, conll2003, a text folder."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    (root / "wikitext-2").mkdir()
    lines = [" = Title = \n"] + [
        " " + " . ".join(_sentence(rng) for _ in range(4)) + " . \n" for _ in range(40)
    ]
    (root / "wikitext-2" / "wiki.train.tokens").write_text("".join(lines))
    (root / "folder").mkdir()
    for d in range(6):
        (root / "folder" / f"doc{d}.txt").write_text(" ".join(_sentence(rng) + "." for _ in range(5)))
    (root / "sst2").mkdir()
    for split, n in (("train", 96), ("dev", 24)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            rows.append(f"{_sentence(rng)} {'good' if label else 'bad'} \t{label}\n")
        (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    (root / "mrpc").mkdir()
    for split, n in (("train", 64), ("dev", 16)):
        rows = []
        for i in range(n):
            a = _sentence(rng)
            label = rng.randint(0, 1)
            rows.append(f"{label}\t{i}\t{i + 1000}\t{a}\t{a if label else _sentence(rng)}\n")
        header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        (root / "mrpc" / f"{split}.tsv").write_text(header + "".join(rows), encoding="utf-8")
    (root / "conll2003").mkdir()
    for split, n in (("train", 64), ("valid", 8), ("test", 16)):
        sentences = []
        for _ in range(n):
            tokens = []
            for _ in range(rng.randint(2, 7)):
                if rng.random() < 0.3:
                    kind = rng.choice(["PER", "LOC"])
                    tokens += [f"{rng.choice(['Ann', 'Bob', 'Paris'])} NNP B-NP B-{kind}"]
                    if rng.random() < 0.5:
                        tokens += [f"Smith NNP I-NP I-{kind}"]
                else:
                    tokens += [f"{rng.choice(WORDS)} NN B-NP O"]
            sentences.append("\n".join(tokens))
        (root / "conll2003" / f"{split}.txt").write_text("\n\n".join(sentences))
    return root


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny random BERT in Hugging Face format with the bert-base-uncased tokenizer (stands in for MiniLM).

    (A WordPiece vocabulary trained here would not do: `tokenizers` training is not reproducible.)
    """
    directory = tmp_path_factory.mktemp("hf")
    tokenizer = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=24,
        num_layers=2,
        num_heads=2,
        intermediate_size=37,
        max_len=128,
    )
    save_hf_model(BertForPreTraining(config), directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def _run(path: str, out: Path, data_dir: Path, **overrides) -> dict:
    """`seqbert train recipes/PATH --out OUT --data-dir DATA --set ...` with the tiny training settings."""
    items = [f"train.{k}={json.dumps(v)}" for k, v in TINY_TRAIN.items()]
    items += [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return run_job(RECIPES / path, out, items, str(data_dir))


# Pinned losses are regression checks of each recipe under its seed; they moved once, on purpose, when
# dropout masks came to be drawn from 16-bit random integers (seqbert.model.dropout), a different stream.
def _losses(run_dir: Path) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("pretrain")
    results = _run(
        "text_pretrain_wikitext2.yaml",
        run_dir,
        data_dir,
        batch_size=16,
        eval_pairs=8,
        **{
            "tokenizer.min_frequency": 1,
            "model.hidden_size": 24,
            "model.intermediate_size": 37,
            "model.dropout": 0.0,
            "max_len": 32,
        },
    )
    return run_dir, results


def test_pretrain_wikitext_d2l_config(pretrained):
    run_dir, results = pretrained
    assert results["steps"] == 6 and results["vocab_size"] == len(WORDS) + 5 + 1  # words, specials, "."
    model_dir = run_dir / "model"
    assert (model_dir / "tokenizer.json").exists() and (model_dir / "model.safetensors").exists()
    assert set(results["eval"]) == {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"}
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(results))
    assert _losses(run_dir) == pytest.approx([3.96368, 3.96526, 3.94394], abs=1e-4)


def test_pretrain_text_folder_with_a_loaded_vocab(tmp_path, data_dir):
    results = _run(
        "text_pretrain_wikitext2_wordpiece.yaml",
        tmp_path,
        data_dir,
        batch_size=8,
        eval_pairs=0,
        **{
            "data.source": "folder",
            "data.path": "folder",
            "tokenizer.kind": "file",
            "tokenizer.path": str(minilm_dir() / "vocab.txt"),
            "model.hidden_size": 16,
            "model.num_layers": 1,
            "model.intermediate_size": 20,
            "max_len": 24,
            "train.eval_every": 0,
            "train.checkpoint_every": 0,
            "train.max_seconds": None,
        },
    )
    assert results["steps"] == 6 and results["eval"] == {} and results["vocab_size"] == 30522
    assert _losses(tmp_path) == pytest.approx([10.94531, 10.86900, 10.81288], abs=1e-4)


@pytest.mark.parametrize("dataset", ["sst2", "mrpc"])
def test_finetune_classify_from_hf(tmp_path, data_dir, hf_dir, dataset):
    results = _run(
        f"finetune_{dataset}.yaml", tmp_path, data_dir, batch_size=16, **{"model.init_dir": str(hf_dir)}
    )
    assert results["steps"] == 6 and 0 <= results["eval_accuracy"] <= 1 and "eval_f1" in results
    assert results["fresh_parameters"] == 2  # the classifier's weight and bias; pooler came from the file
    pinned = {"sst2": [0.67478, 0.70191, 0.71891], "mrpc": [0.68391, 0.71318, 0.68021]}[dataset]
    assert _losses(tmp_path) == pytest.approx(pinned, abs=1e-4)
    clf = TextModel.from_pretrained(tmp_path)  # the run directory holds its model in model/
    out = clf.predict(["the cat sat"], ["the dog ran"] if dataset == "mrpc" else None)
    assert out[0]["label"] in clf.task.labels and sum(out[0]["scores"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("init", ["seqbert", "scratch"])
def test_finetune_sst2_from_pretraining_run(tmp_path, data_dir, pretrained, init):
    run_dir, _ = pretrained
    results = _run(
        "finetune_sst2.yaml",
        tmp_path,
        data_dir,
        batch_size=16,
        max_len=32,
        **{"model.init": init, "model.init_dir": str(run_dir)},
    )
    # from the run: all but the classifier's weight and bias; from scratch: all 33 tensors (5 embedding,
    # 2 layers x 12, pooler 2, classifier 2)
    assert results["fresh_parameters"] == {"seqbert": 2, "scratch": 33}[init]
    assert _losses(tmp_path) == pytest.approx(
        {"seqbert": [0.67498, 0.70180, 0.71819], "scratch": [0.68067, 0.70016, 0.71360]}[init], abs=1e-4
    )


def test_finetune_ner_from_hf(tmp_path, data_dir, hf_dir):
    results = _run(
        "finetune_conll2003.yaml",
        tmp_path,
        data_dir,
        batch_size=16,
        **{"model.init_dir": str(hf_dir), "data.dev_file": "conll2003/valid.txt", "train.eval_every": 3},
    )
    assert results["test_sentences"] == 16 and 0 <= results["test_f1"] <= 1 and "dev_f1" in results
    assert _losses(tmp_path) == pytest.approx([2.11817, 2.05495, 2.01960, 1.92154], abs=1e-4)
    tagger = TextModel.from_pretrained(tmp_path / "model")
    out = tagger.predict(["Ann Smith sat on the mat"])
    assert out[0]["words"] == ["Ann", "Smith", "sat", "on", "the", "mat"] and len(out[0]["tags"]) == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "train.lr=abc"], "train.lr: expected float, got 'abc'"),
        (["--set", "data.dataset=imdb"], "yaml.data: dataset must be one of"),
        (["--set", "batch_size=-1"], "batch_size must be >= 1, got -1"),
        (["--set", "model.nope=1"], "unknown key(s) ['nope']"),
        (
            ["--data-dir", "/nonexistent/seqbert-data"],
            "data directory /nonexistent/seqbert-data does not exist",
        ),
        (["--set", "data.train_file=missing.tsv"], "missing.tsv: file not found"),
    ],
)
def test_bad_config_or_data_is_one_line_and_exit_2(tmp_path, data_dir, capsys, extra, message):
    argv = ["train", str(RECIPES / "finetune_sst2.yaml"), "--out", str(tmp_path / "run")]
    if "--data-dir" not in extra:
        argv += ["--data-dir", str(data_dir)]
    assert cli(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("seqbert train: error:") and message in err, err


def test_d2l_pytorch_loss_is_the_mean_over_padded_slots():
    """D2LLoss reproduces D2L's PyTorch formula: with no padded slot it is the masked loss; each padded
    slot adds CE(<unk> | h_[CLS]) and everything is divided by B * slots."""
    import torch.nn.functional as F

    from seqbert.model.bert import BertConfig
    from seqbert.model.heads import IGNORE_INDEX, BertForPreTraining

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=31, hidden_size=8, num_layers=1, num_heads=2,
                                          intermediate_size=16, max_len=12)).eval()  # fmt: skip
    ids = torch.randint(5, 31, (3, 12))
    labels = torch.full((3, 12), IGNORE_INDEX)
    labels[0, [2, 5]] = ids[0, [2, 5]]  # 2 real predictions, 1 padded slot
    labels[1, [3, 4, 7]] = ids[1, [3, 4, 7]]  # 3 real, none padded
    labels[2, 9] = ids[2, 9]  # 1 real, 2 padded
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "next_sentence_label": torch.tensor([0, 1, 0])}  # fmt: skip
    out = D2LLoss(model, slots=3, unk_id=1)(batch)
    ref = model(batch)
    torch.testing.assert_close(out.masked_mlm_loss, ref.mlm_loss)
    torch.testing.assert_close(out.nsp_loss, ref.nsp_loss)
    hidden = model.bert(ids, batch["attention_mask"])
    unk_at_cls = F.cross_entropy(model.mlm(hidden[:, 0]), torch.ones(3, dtype=torch.long), reduction="none")
    expect = (ref.mlm_loss * 6 + 1 * unk_at_cls[0] + 2 * unk_at_cls[2]) / 9
    torch.testing.assert_close(out.mlm_loss, expect)
    full = D2LLoss(model, slots=1, unk_id=1)  # no row has a padded slot (counts >= 1)
    torch.testing.assert_close(full(batch).mlm_loss * 3, ref.mlm_loss * 6)  # sum / (B * slots), no padding
