"""Text task glue: collators, initialisation from the three sources, metrics, saving and the predict CLI.

(Named test_text_task.py, not test_text.py: tests/ has no __init__.py files, so two test modules with one
basename would collide under pytest's default import mode.)
"""

import argparse
import json

import pytest
import torch

from seqbert.data.text import encode_texts, load_tokenizer, special_ids
from seqbert.model.bert import BertConfig
from seqbert.model.heads import IGNORE_INDEX, BertForPreTraining
from seqbert.tasks.text import (
    TextTask,
    build_classifier,
    classification_collate,
    minilm_dir,
    pretraining_collate,
    trim_batch,
)
from seqbert.text_model import (
    TextModel,
    add_text_parsers,
    classification_scores,
    evaluate_classification,
    evaluate_pretraining,
    init_classifier,
    load_backbone,
    load_text_model,
    predict,
    save_pretrained,
    word_tags,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(minilm_dir())


def _tiny_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=24,
        num_layers=1,
        num_heads=2,
        intermediate_size=37,
        max_len=32,
        dropout=0.0,
        attention_dropout=0.0,
    )


def test_trim_batch_cuts_to_the_longest_row():
    raw = {
        "input_ids": torch.tensor([[5, 6, 0, 0, 0], [5, 6, 7, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]),
        "labels": torch.tensor([1, 0]),
    }
    out = trim_batch(raw)
    assert out["input_ids"].shape == (2, 3) and torch.equal(out["labels"], raw["labels"])
    assert set(classification_collate(raw, torch.Generator())) == {"input_ids", "attention_mask", "labels"}


def test_pretraining_collate_masks_dynamically_and_never_specials(tokenizer):
    specials = special_ids(tokenizer)
    enc = encode_texts(tokenizer, ["the cat sat on the mat today"] * 8, ["a dog ran"] * 8, max_len=32)
    raw = {**enc, "next_sentence_label": torch.zeros(8, dtype=torch.long)}
    collate = pretraining_collate(specials, tokenizer.get_vocab_size(), prob=0.5)
    a = collate(raw, torch.Generator().manual_seed(0))
    b = collate(raw, torch.Generator().manual_seed(0))
    c = collate(raw, torch.Generator().manual_seed(1))
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["labels"], c["labels"])
    special = torch.isin(enc["input_ids"], torch.tensor([specials.pad, specials.cls, specials.sep]))
    assert (a["labels"][special] == IGNORE_INDEX).all() and (a["labels"] != IGNORE_INDEX).any()
    assert set(a) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}


def test_evaluate_pretraining_is_repeatable(tokenizer):
    specials = special_ids(tokenizer)
    enc = encode_texts(tokenizer, ["the cat sat"] * 5, ["on the mat"] * 5, max_len=16)
    tensors = {**enc, "next_sentence_label": torch.tensor([0, 1, 0, 1, 0])}
    evaluate = evaluate_pretraining(
        tensors, pretraining_collate(specials, tokenizer.get_vocab_size(), 0.5), 2
    )
    torch.manual_seed(0)
    model = BertForPreTraining(_tiny_config(tokenizer.get_vocab_size())).eval()
    first, second = evaluate(model), evaluate(model)
    assert first == second and first["mlm_loss"] > 0 and 0 <= first["nsp_accuracy"] <= 1


def test_minilm_initialisation_leaves_only_the_new_head_fresh():
    config, tokenizer, weights = load_backbone("hf", None)
    assert config.hidden_size == 384 and special_ids(tokenizer).cls == 101
    model = build_classifier("sequence", config, 2)
    fresh = init_classifier(model, weights, None)
    assert sorted(fresh) == ["classifier.bias", "classifier.weight"]
    token_model = build_classifier("token", config, 9)
    assert sorted(init_classifier(token_model, weights, None)) == ["classifier.bias", "classifier.weight"]
    with pytest.raises(ValueError, match="init_dir"):
        load_backbone("seqbert", None)
    with pytest.raises(ValueError, match="use init='hf'"):
        load_backbone("seqbert", minilm_dir())


def test_classification_scores_hand_computed():
    # TP = 2 (rows 0, 1), FP = 1 (row 3), FN = 1 (row 2): F1 = 4 / (4 + 2)
    scores = classification_scores([1, 1, 0, 1, 0], [1, 1, 1, 0, 0])
    assert scores == {"accuracy": pytest.approx(3 / 5), "f1": pytest.approx(4 / 6)}
    assert "f1" not in classification_scores([0, 2], [1, 2])


def test_word_tags_use_first_subtokens_and_default_to_o():
    labels = ("O", "B-PER", "I-PER")
    logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [0, 0, 9.0], [9.0, 0, 0]])  # (L, C)
    word_index = torch.tensor([-1, 0, -1, 1, -1])  # word 2 was truncated away
    assert word_tags(logits, word_index, 3, labels) == ["B-PER", "I-PER", "O"]


def test_saved_run_predicts_from_the_cli(tmp_path, tokenizer, capsys):
    torch.manual_seed(0)
    model = build_classifier("pair", _tiny_config(tokenizer.get_vocab_size()), 2)
    task = TextTask("pair", ("no", "yes"), 32)
    save_pretrained(tmp_path / "model", model, tokenizer, task)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "model.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    loaded, loaded_tok, loaded_task = load_text_model(tmp_path)  # a run directory: its model/
    assert loaded_task == task
    batch = encode_texts(tokenizer, ["a b"], ["c"], 32)
    torch.testing.assert_close(loaded(batch).logits, model.eval()(batch).logits)
    parser = argparse.ArgumentParser()
    add_text_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["text", "predict", str(tmp_path), "--text", "a b", "--pair", "c"])
    assert args.func(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row == predict(loaded, loaded_tok, loaded_task, ["a b"], ["c"])[0]
    assert row["label"] in ("no", "yes")
    with pytest.raises(ValueError, match="--pair"):
        predict(loaded, loaded_tok, loaded_task, ["a b"])


def test_evaluate_classification_matches_manual_argmax(tokenizer):
    torch.manual_seed(0)
    model = build_classifier("sequence", _tiny_config(tokenizer.get_vocab_size()), 2).eval()
    enc = encode_texts(tokenizer, ["good", "a much longer bad sentence", "fine film"], max_len=32)
    tensors = {**enc, "labels": torch.tensor([1, 0, 1])}
    manual = []
    for i in range(3):  # one row at a time, unpadded
        row = {k: v[i : i + 1, : int(enc["attention_mask"][i].sum())] for k, v in enc.items()}
        manual.append(int(model(row).logits.argmax()))
    assert evaluate_classification(tensors, batch_size=2)(model) == classification_scores(manual, [1, 0, 1])


def test_text_model_round_trip_and_bad_inputs(tmp_path, tokenizer):
    from seqbert.data.glue import ClassificationData, TaggingData
    from seqbert.model.hf import save_hf_model

    hf = tmp_path / "hf"
    torch.manual_seed(0)
    save_hf_model(BertForPreTraining(_tiny_config(tokenizer.get_vocab_size())), hf)
    tokenizer.save(str(hf / "tokenizer.json"))
    tagger = TextModel.from_pretrained(hf, labels=("O", "B-PER", "I-PER"), kind="token", max_len=16)
    assert sorted(tagger.fresh) == ["classifier.bias", "classifier.weight"] and tagger.task.max_len == 16
    tagger.save_pretrained(tmp_path / "tagger")
    loaded = TextModel.from_pretrained(tmp_path / "tagger")
    assert loaded.task == tagger.task and loaded.fresh == []
    words = TaggingData([["ann", "sat"]], [["B-PER", "O"]])
    torch.testing.assert_close(
        loaded.model(loaded.encode(words, False)).logits,
        tagger.model.eval()(tagger.encode(words, False)).logits,
    )
    assert loaded.predict(["ann sat"])[0]["words"] == ["ann", "sat"]
    with pytest.raises(ValueError, match=r"tags \['B-LOC'\] are not among"):
        tagger.encode(TaggingData([["paris"]], [["B-LOC"]]))
    with pytest.raises(TypeError, match="TaggingData"):
        tagger.encode(ClassificationData(["a"], None, [0]))
    pair = TextModel.from_pretrained(hf, labels=("no", "yes"), kind="pair", max_len=16)
    with pytest.raises(ValueError, match="a pair model got single texts"):
        pair.encode(ClassificationData(["a"], None, [0]))
    with pytest.raises(ValueError, match=r"labels \[2\] are outside"):
        pair.encode(ClassificationData(["a"], ["b"], [2]))
    with pytest.raises(ValueError, match="exceeds the encoder's max_len=32"):
        TextModel.from_pretrained(hf, labels=("no", "yes"), max_len=33)
    with pytest.raises(ValueError, match="give its directory"):
        TextModel.from_pretrained()
    with pytest.raises(ValueError, match="a pretraining model"):
        TextModel.from_pretrained(_pretraining_model_dir(tmp_path, tokenizer))


def _pretraining_model_dir(tmp_path, tokenizer):
    torch.manual_seed(0)
    return save_pretrained(
        tmp_path / "pre", BertForPreTraining(_tiny_config(tokenizer.get_vocab_size())), tokenizer, None
    )
