import os
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from seqbert import cli
from seqbert.data import interactions as inter
from seqbert.data.vocab import NO_TARGET


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sequences_of(lf: pl.LazyFrame, config: inter.FilterConfig | None = None) -> dict[str, list[str]]:
    seqs = inter.to_sequences(inter.collect_interactions(lf, "log", config))
    return {u: seqs.vocab.decode_many(s) for u, s in zip(seqs.users, seqs.items)}


# ---------------------------------------------------------------- readers


def test_pairs_keep_line_order_per_user(tmp_path):
    path = write(
        tmp_path, "log.txt", "1 50\n2 7\n1 3\n\n1  9\r\n10 4\n2\t8\n"
    )  # blank, double space, CRLF, tab
    assert sequences_of(inter.scan_pairs(path)) == {"1": ["50", "3", "9"], "2": ["7", "8"], "10": ["4"]}


def test_users_in_natural_order(tmp_path):
    seqs = inter.to_sequences(
        inter.collect_interactions(inter.scan_pairs(write(tmp_path, "a.txt", "10 1\n2 1\n1 1\n")), "a")
    )
    assert seqs.users == ["1", "2", "10"]


def test_grouplens_dat_sorts_by_time_then_line(tmp_path):
    # items 12 and 11 share t=100: the earlier line comes first, whatever the item ids
    text = "1::10::5::300\n1::12::3::100\n1::11::4::100\n2::10::1::5\n"
    assert sequences_of(inter.scan_grouplens_dat(write(tmp_path, "ratings.dat", text))) == {
        "1": ["12", "11", "10"],
        "2": ["10"],
    }


def test_udata_tie_break_is_stable_under_many_ties(tmp_path):
    rows = [(1, item, 4, 1000) for item in (9, 3, 7, 1, 5)] + [(1, 2, 4, 999)]
    path = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    assert sequences_of(inter.scan_udata(path)) == {"1": ["2", "9", "3", "7", "1", "5"]}


def test_table_csv_tsv_parquet_agree(tmp_path):
    frame = pl.DataFrame(
        {
            "extra": ["x"] * 5,
            "uid": ["u2", "u1", "u1", "u2", "u1"],
            "sku": ["b", "c", "a", "a", "b"],
            "ts": [
                "2020-01-02T00:00:00",
                "2020-01-03T00:00:00",
                "2020-01-01T00:00:00",
                "2020-01-01T00:00:00",
                "2020-01-03T00:00:00",
            ],
        }
    )
    frame.write_csv(tmp_path / "log.csv")
    frame.write_csv(tmp_path / "log.tsv", separator="\t")
    frame.write_parquet(tmp_path / "log.parquet")
    expected = {"u1": ["a", "c", "b"], "u2": ["a", "b"]}
    for name, sep in (("log.csv", ","), ("log.tsv", "\t"), ("log.parquet", ",")):
        assert sequences_of(inter.scan_table(tmp_path / name, "uid", "sku", "ts", sep=sep)) == expected, name


def test_table_epoch_timestamps_and_rating(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating,time\na,x,5,30\na,y,2,10\na,z,4,20\n")
    lf = inter.scan_table(path, "user", "item", "time", "rating")
    assert sequences_of(lf) == {"a": ["y", "z", "x"]}
    assert sequences_of(lf, inter.FilterConfig(min_rating=4)) == {"a": ["z", "x"]}


def test_unknown_column_named(tmp_path):
    path = write(tmp_path, "log.csv", "user,item\n1,2\n")
    with pytest.raises(
        ValueError, match=r"log.csv: unknown column\(s\) \['when'\]; the file has columns \['user', 'item'\]"
    ):
        inter.scan_table(path, "user", "item", "when")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("reader", "text", "where", "what"),
    [
        (inter.scan_pairs, "1 2\n1 2 3\n", ":2:", "expected 2 fields"),
        (inter.scan_pairs, "1 2\n1 2\n3\n", ":3:", "expected 2 fields"),
        (inter.scan_pairs, "1 2\n1 x\n", ":2:", "item must be an integer, got x"),
        (inter.scan_grouplens_dat, "1::2::5::9\n1::2::five::9\n", ":2:", "rating must be a number, got five"),
        (inter.scan_grouplens_dat, "1::2::5\n", ":1:", "expected 4 fields"),
        (inter.scan_udata, "1\t2\t5\t9\nu\t2\t5\t9\n", ":2:", "user must be an integer, got u"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, reader, text, where, what):
    path = write(tmp_path, "bad.log", text)
    with pytest.raises(ValueError, match=f"bad.log{where}") as info:
        inter.collect_interactions(reader(path), path)
    assert what in str(info.value)


def test_malformed_csv_timestamp_names_line(tmp_path):
    path = write(tmp_path, "log.csv", "u,i,t\n1,2,5\n1,3,yesterday\n")
    with pytest.raises(
        ValueError, match=r"log.csv:3: 't' must be an integer or ISO date-time, got yesterday"
    ):
        inter.collect_interactions(inter.scan_table(path, "u", "i", "t"), path)


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.txt", "")
    with pytest.raises(ValueError, match="empty.txt: no interactions"):
        inter.collect_interactions(inter.scan_pairs(path), path)


def test_min_rating_needs_ratings(tmp_path):
    path = write(tmp_path, "a.txt", "1 2\n")
    with pytest.raises(ValueError, match="needs a rating column"):
        inter.collect_interactions(inter.scan_pairs(path), path, inter.FilterConfig(min_rating=3))


def test_duplicates_dropped_only_with_timestamps(tmp_path):
    dat = write(tmp_path, "r.dat", "1::5::3::10\n1::6::3::11\n1::5::4::10\n1::5::3::12\n")
    assert sequences_of(inter.scan_grouplens_dat(dat)) == {"1": ["5", "6", "5"]}  # line 3 repeats (1, 5, 10)
    pairs = write(tmp_path, "p.txt", "1 5\n1 5\n")
    assert sequences_of(inter.scan_pairs(pairs)) == {"1": ["5", "5"]}  # no time: a repeat is a new event


# ---------------------------------------------------------------- k-core


def test_k_core_iterates_to_fixpoint():
    # pass 1 drops user C and item z; then A-y and B-x fall below 2; then A-x: only the D/E x p/q block stays
    rows = [
        ("A", "x"),
        ("A", "y"),
        ("B", "x"),
        ("B", "z"),
        ("C", "y"),
        ("D", "p"),
        ("D", "q"),
        ("E", "p"),
        ("E", "q"),
    ]
    df = pl.DataFrame({"user": [r[0] for r in rows], "item": [r[1] for r in rows]})
    kept = inter.k_core(df, 2, 2)
    assert sorted(zip(kept["user"], kept["item"])) == [("D", "p"), ("D", "q"), ("E", "p"), ("E", "q")]


def _reference_k_core(rows, k_user, k_item):
    rows = list(rows)
    while True:
        users = {u: sum(1 for r in rows if r[0] == u) for u, _ in rows}
        items = {i: sum(1 for r in rows if r[1] == i) for _, i in rows}
        kept = [r for r in rows if users[r[0]] >= k_user and items[r[1]] >= k_item]
        if len(kept) == len(rows):
            return kept
        rows = kept


def test_k_core_matches_reference_on_random_logs():
    rng = random.Random(7)
    for _ in range(5):
        rows = [(f"u{rng.randrange(23)}", f"i{rng.randrange(17)}") for _ in range(131)]
        df = pl.DataFrame({"user": [r[0] for r in rows], "item": [r[1] for r in rows]})
        kept = inter.k_core(df, 5, 4)
        assert sorted(zip(kept["user"], kept["item"])) == sorted(_reference_k_core(rows, 5, 4))


# ---------------------------------------------------------------- splits


def _full_sequences(tmp_path, text):
    return inter.to_sequences(
        inter.collect_interactions(inter.scan_pairs(write(tmp_path, "s.txt", text)), "s")
    )


def test_leave_one_out_split_and_no_leakage(tmp_path):
    rng = random.Random(3)
    lines = [f"{u} {rng.randrange(1, 40)}" for u in range(1, 30) for _ in range(rng.randrange(1, 12))]
    seqs = _full_sequences(tmp_path, "\n".join(lines) + "\n")
    ds = inter.leave_one_out(seqs)
    valid_in, test_in = ds.valid_inputs(), ds.test_inputs()
    for u, full in enumerate(seqs.items):
        if len(full) < 3:
            assert ds.valid_targets[u] == NO_TARGET and ds.test_targets[u] == NO_TARGET
            np.testing.assert_array_equal(ds.train_sequences[u], full)
            continue
        assert ds.valid_targets[u] == full[-2] and ds.test_targets[u] == full[-1]
        # the history stops right before the target's position: the target is never part of its own input
        np.testing.assert_array_equal(valid_in[u], full[: len(full) - 2])
        np.testing.assert_array_equal(test_in[u], full[: len(full) - 1])
        np.testing.assert_array_equal(ds.train_sequences[u], full[:-2])
    assert ds.num_interactions() == sum(len(s) for s in seqs.items)


def test_leave_one_out_small_example(tmp_path):
    ds = inter.leave_one_out(_full_sequences(tmp_path, "1 5\n1 6\n1 7\n1 8\n2 5\n2 6\n"))
    v = ds.vocab
    assert v.decode_many(ds.train_sequences[0]) == ["5", "6"]
    assert v.decode(ds.valid_targets[0]) == "7" and v.decode(ds.test_targets[0]) == "8"
    assert v.decode_many(ds.test_inputs()[0]) == ["5", "6", "7"]
    assert ds.valid_targets[1] == NO_TARGET and v.decode_many(ds.train_sequences[1]) == ["5", "6"]


def test_temporal_split(tmp_path):
    text = "1\t1\t5\t10\n1\t2\t5\t20\n1\t3\t5\t30\n1\t4\t5\t40\n2\t1\t5\t35\n3\t2\t5\t5\n3\t3\t5\t15\n"
    seqs = inter.to_sequences(
        inter.collect_interactions(inter.scan_udata(write(tmp_path, "u.data", text)), "u")
    )
    ds = inter.temporal_split(seqs, cutoff=30)
    v = ds.vocab
    assert ds.users == ["1", "3"]  # user 2 has nothing before the cutoff
    assert v.decode_many(ds.train_sequences[0]) == ["1", "2"] and v.decode(ds.test_targets[0]) == "3"
    assert v.decode_many(ds.train_sequences[1]) == ["2", "3"] and ds.test_targets[1] == NO_TARGET
    assert (ds.valid_targets == NO_TARGET).all()
    assert inter.quantile_cutoff(seqs, 0.5) == 20  # timestamps 5 10 15 20 30 35 40
    with pytest.raises(ValueError, match="exactly one"):
        inter.temporal_split(seqs)


def test_temporal_split_needs_timestamps(tmp_path):
    with pytest.raises(ValueError, match="needs timestamps"):
        inter.temporal_split(_full_sequences(tmp_path, "1 2\n1 3\n"), cutoff=5)


# ---------------------------------------------------------------- save / load


def _saved(tmp_path):
    ds = inter.leave_one_out(_full_sequences(tmp_path, "1 5\n1 6\n1 7\n1 8\n2 9\n2 5\n3 6\n3 7\n3 9\n"))
    out = tmp_path / "prepared"
    stats = inter.save_prepared(ds, out, [tmp_path / "s.txt"])
    return ds, out, stats


def test_save_load_round_trip(tmp_path):
    ds, out, stats = _saved(tmp_path)
    back = inter.load_prepared(out)
    assert back.users == ds.users and back.vocab == ds.vocab and back.split == "leave_one_out"
    for a, b in zip(back.train_sequences, ds.train_sequences):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.valid_targets, ds.valid_targets)
    np.testing.assert_array_equal(back.test_targets, ds.test_targets)
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 5, 9)
    assert stats["sequence_length"] == {"min": 2, "max": 4, "mean": 3.0, "median": 3.0}
    assert stats["density"] == pytest.approx(9 / 15)
    assert stats["sources"][0]["file"] == "s.txt" and len(stats["sources"][0]["sha256"]) == 64


def test_save_load_keeps_empty_and_equal_length_histories(tmp_path):
    vocab = inter.ItemVocab(["a", "b", "c"])
    train = [np.array([2, 3]), np.zeros(0, np.int64), np.array([4, 2])]
    ds = inter.SequenceDataset(
        ["u1", "u2", "u3"], train, np.array([4, 2, -1]), np.array([3, -1, -1]), vocab, "temporal"
    )
    inter.save_prepared(ds, tmp_path)
    back = inter.load_prepared(tmp_path)
    assert [s.tolist() for s in back.train_sequences] == [[2, 3], [], [4, 2]]
    assert back.test_targets.tolist() == [3, -1, -1] and back.split == "temporal"


@pytest.mark.parametrize("name", ["sequences.parquet", "vocab.json", "stats.json"])
def test_load_missing_file_named(tmp_path, name):
    _, out, _ = _saved(tmp_path)
    (out / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        inter.load_prepared(out)


@pytest.mark.parametrize("name", ["sequences.parquet", "vocab.json"])
def test_load_corrupt_file_named(tmp_path, name):
    _, out, _ = _saved(tmp_path)
    data = bytearray((out / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{name}: sha256 differs"):
        inter.load_prepared(out)


def test_load_checks_ids_against_vocab(tmp_path):
    _, out, stats = _saved(tmp_path)
    inter.ItemVocab(["5", "6"]).save(out / "vocab.json")  # fewer items than the sequences use
    stats_text = (
        (out / "stats.json")
        .read_text()
        .replace(stats["files"]["vocab.json"], inter.sha256_file(out / "vocab.json"))
    )
    (out / "stats.json").write_text(stats_text)
    with pytest.raises(ValueError, match="sequences.parquet: column 'train' has id"):
        inter.load_prepared(out)


def test_load_corrupt_stats(tmp_path):
    _, out, _ = _saved(tmp_path)
    (out / "stats.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="stats.json: not valid JSON"):
        inter.load_prepared(out)


# ---------------------------------------------------------------- CLI


def test_cli_prepare_custom_and_stats(tmp_path, capsys):
    path = write(
        tmp_path, "log.tsv", "who\twhat\twhen\nb\tx\t3\na\ty\t1\na\tx\t2\na\tz\t5\nb\ty\t4\nb\tz\t9\n"
    )
    out = tmp_path / "out"
    argv = [
        "data",
        "prepare",
        "custom",
        "--interactions",
        str(path),
        "--user-col",
        "who",
        "--item-col",
        "what",
    ]
    assert cli.main([*argv, "--time-col", "when", "--out", str(out)]) == 0
    ds = inter.load_prepared(out)
    assert ds.users == ["a", "b"] and ds.vocab.decode_many(ds.test_inputs()[0]) == ["y", "x"]
    assert cli.main(["data", "stats", str(out)]) == 0
    assert '"interactions": 6' in capsys.readouterr().out
    assert cli.main([*argv, "--time-col", "nope", "--out", str(out)]) == 2
    assert "unknown column(s) ['nope']" in capsys.readouterr().err


def test_cli_missing_builtin_file_says_where_and_how(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SEQBERT_DATA_DIR", raising=False)
    assert cli.main(["data", "prepare", "beauty", "--out", str(tmp_path / "o")]) == 2
    assert "SEQBERT_DATA_DIR" in capsys.readouterr().err
    assert (
        cli.main(["data", "prepare", "beauty", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert str(tmp_path / "beauty" / "beauty.txt") in err and "seqbert data fetch beauty" in err


# ---------------------------------------------------------------- real data (skips without SEQBERT_DATA_DIR)


def _real(relative: str) -> Path:
    root = os.environ.get("SEQBERT_DATA_DIR")
    if not root or not (Path(root) / relative).is_file():
        pytest.skip(f"needs $SEQBERT_DATA_DIR/{relative}")
    return Path(root) / relative


def test_ml1m_counts_and_order_match_the_file(tmp_path):
    path = _real("ml-1m/ml-1m.txt")
    assert (
        cli.main(["data", "prepare", "ml-1m", "--data-dir", str(path.parents[1]), "--out", str(tmp_path)])
        == 0
    )
    stats = inter.load_stats(tmp_path)
    assert (stats["users"], stats["items"], stats["interactions"]) == (6040, 3416, 999_611)
    assert stats["repeat_rate"] == 0.0  # ML-1M in the SASRec form has no repeated (user, item) pairs
    ds = inter.load_prepared(tmp_path)
    reference: dict[str, list[str]] = {}  # plain-Python reading: line order is the time order
    for line in path.read_text().splitlines():
        user, item = line.split()
        reference.setdefault(user, []).append(item)
    for u in (0, 1, 2345, 6039):
        full = ds.vocab.decode_many(ds.test_inputs()[u]) + [ds.vocab.decode(ds.test_targets[u])]
        assert full == reference[ds.users[u]]


@pytest.mark.parametrize(
    ("name", "relative", "counts"),
    [
        ("ml-100k", "ml-100k/raw/u.data", (943, 1682, 100_000)),
        ("beauty", "beauty/beauty.txt", (40_226, 54_542, 353_962)),
    ],
)
def test_real_counts(tmp_path, name, relative, counts):
    path = _real(relative)
    data_dir = path.parents[len(Path(relative).parents) - 1]
    assert cli.main(["data", "prepare", name, "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    stats = inter.load_stats(tmp_path)
    assert (stats["users"], stats["items"], stats["interactions"]) == counts


def test_repeat_rate_counts_targets_already_in_the_history():
    histories = [np.array([3, 4, 5]), np.array([6]), np.array([7, 8]), np.array([9])]
    targets = np.array([4, 7, NO_TARGET, 9])  # a repeat, a new item, no target, a repeat
    assert inter.repeat_rate(histories, targets) == pytest.approx(2 / 3)
    assert inter.repeat_rate([], np.array([], dtype=np.int64)) == 0.0
