import json

import numpy as np
import pytest

from seqbert.data.vocab import FIRST_ITEM_ID, MASK_ID, NUM_SPECIAL, PAD_ID, ItemVocab, natural_order


def test_layout_constants():
    assert (PAD_ID, MASK_ID, FIRST_ITEM_ID, NUM_SPECIAL) == (0, 1, 2, 2)


def test_natural_order_numeric_and_text():
    assert natural_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert natural_order(["b10", "b2", "a"]) == ["a", "b10", "b2"]  # not all integers: plain string order


def test_from_items_ids_start_after_specials():
    vocab = ItemVocab.from_items(["10", "2", "1", "2"])
    assert vocab.items == ("1", "2", "10")
    assert vocab.num_items == 3 and vocab.size == 5 and len(vocab) == 5
    assert [vocab.encode(i) for i in ("1", "2", "10")] == [2, 3, 4]
    assert vocab.decode(4) == "10"


def test_encode_decode_round_trip():
    items = [f"sku-{k}" for k in range(37)]
    vocab = ItemVocab.from_items(items)
    ids = vocab.encode_many(items)
    assert ids.dtype == np.int64 and ids.min() == FIRST_ITEM_ID and ids.max() == vocab.size - 1
    assert vocab.decode_many(ids) == items


def test_unknown_and_special_ids_raise():
    vocab = ItemVocab.from_items(["a", "b"])
    with pytest.raises(KeyError, match="'zzz'"):
        vocab.encode("zzz")
    for bad in (PAD_ID, MASK_ID, vocab.size):
        with pytest.raises(KeyError, match="not an item id"):
            vocab.decode(bad)


def test_duplicate_items_rejected():
    with pytest.raises(ValueError, match="duplicate item id 'x'"):
        ItemVocab(["x", "y", "x"])


def test_save_load_round_trip(tmp_path):
    vocab = ItemVocab.from_items(["7", "3", "11"])
    vocab.save(tmp_path / "vocab.json")
    loaded = ItemVocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.encode("11") == vocab.encode("11")


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "vocab.json"
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        ItemVocab.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="vocab.json: not valid JSON"):
        ItemVocab.load(path)
    path.write_text(
        json.dumps(
            {"format": "seqbert.item_vocab", "version": 1, "specials": ["[MASK]", "[PAD]"], "items": []}
        )
    )
    with pytest.raises(ValueError, match="specials"):
        ItemVocab.load(path)
    path.write_text(
        json.dumps(
            {
                "format": "seqbert.item_vocab",
                "version": 1,
                "specials": ["[PAD]", "[MASK]"],
                "items": ["a", "a"],
            }
        )
    )
    with pytest.raises(ValueError, match="vocab.json: ItemVocab: duplicate"):
        ItemVocab.load(path)
