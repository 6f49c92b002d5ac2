"""BEIR reader: CRLF qrels with a header, titles joined to text, clear errors; real SciFact when available."""

import json
from pathlib import Path

import pytest
from conftest import require_data

from seqbert.retrieval.beir import holdout_split, load_beir, read_qrels


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "d1", "title": "Alpha", "text": "first doc"},
        {"_id": "007", "title": "", "text": "second"},
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": "q1", "text": "alpha?"}, {"_id": "q2", "text": "unjudged"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\t007\t2\r\n")
    return root


def test_load_beir_reads_the_layout(tmp_path):
    data = load_beir(write_beir(tmp_path))
    assert data.doc_ids == ["d1", "007"]  # ids stay strings: leading zeros survive
    assert data.doc_texts == ["Alpha first doc", "second"]
    assert data.queries == {"q1": "alpha?"}  # only judged queries
    assert data.qrels == {"q1": {"d1": 1, "007": 2}}


def test_holdout_split_depends_only_on_ids_and_seed():
    qids = [f"q{i}" for i in range(50)]
    kept, held = holdout_split(qids, 12, seed=3)
    assert len(held) == 12 and len(kept) == 38 and not set(kept) & set(held)
    assert kept + held != qids and sorted(kept + held) == sorted(qids)  # a real split, nothing dropped
    assert kept == [q for q in qids if q in set(kept)]  # order kept
    shuffled = qids[::-1]  # another job reading the ids in another order holds out the same queries
    assert set(holdout_split(shuffled, 12, seed=3)[1]) == set(held)
    assert set(holdout_split(qids, 12, seed=4)[1]) != set(held)
    assert set(holdout_split(qids, 13, seed=3)[1]) > set(held)  # one more: the same twelve and another
    for n in (0, 50):
        with pytest.raises(ValueError, match="holdout of"):
            holdout_split(qids, n)


def test_errors_name_file_and_line(tmp_path):
    root = write_beir(tmp_path)
    (root / "qrels" / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 3 tab-separated"):
        read_qrels(root / "qrels" / "bad.tsv")
    (root / "qrels" / "x.tsv").write_text("q1\tnope\t1\n")
    with pytest.raises(ValueError, match="corpus ids not in corpus.jsonl"):
        load_beir(root, "x")
    with pytest.raises(FileNotFoundError, match="missing qrels"):
        load_beir(root, "dev")
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: expected an object with keys"):
        load_beir(root)


def test_real_scifact_statistics():
    root = require_data("scifact/corpus.jsonl").parent
    test, train = load_beir(root, "test"), load_beir(root, "train")
    assert len(test.doc_ids) == 5183
    assert (len(test.queries), sum(len(r) for r in test.qrels.values())) == (300, 339)
    assert (len(train.queries), sum(len(r) for r in train.qrels.values())) == (809, 919)
