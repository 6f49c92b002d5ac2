"""Side features aligned to an id space: explicit unknowns, multi-valued cells, standardised numbers, and
one-line errors naming the file and the value."""

import logging

import numpy as np
import polars as pl
import pytest

from seqbert.data.features import (
    FIRST_VALUE,
    PAD,
    UNKNOWN,
    FeatureFile,
    FeatureTable,
    align_features,
    read_feature_table,
)


def _table():
    frame = pl.DataFrame(
        {
            "item": ["a", "b", "c", "zz"],
            "genres": ["Comedy|Drama", "Drama", "", "Horror"],
            "year": ["1990", "2000", None, "1950"],
        }
    )
    return FeatureTable(frame, "item", ("genres",), ("year",), "|", "items.csv")


def test_alignment_makes_unknowns_explicit(caplog):
    keys = [None, "c", "a", "missing", "b"]  # row 0 a special id, "missing" has no row, "zz" is not in keys
    with caplog.at_level(logging.WARNING):
        f = align_features(_table(), keys)
    assert (
        "1 ids of the data have no feature row" in caplog.text
        and "1 table ids are not in the data" in caplog.text
    )
    values = f.values["genres"]
    assert values == ["Comedy", "Drama", "Horror"]
    comedy, drama = FIRST_VALUE + values.index("Comedy"), FIRST_VALUE + values.index("Drama")
    g = f.categorical["genres"]  # (5, 2)
    assert g.shape == (5, 2)
    assert g[0].tolist() == [UNKNOWN, PAD] and g[3].tolist() == [UNKNOWN, PAD]  # special id, no row
    assert g[1].tolist() == [UNKNOWN, PAD]  # an empty cell is unknown too
    assert g[2].tolist() == [comedy, drama] and g[4].tolist() == [drama, PAD]
    assert f.known.tolist() == [False, True, True, False, True]
    assert f.cardinality("genres") == FIRST_VALUE + 3
    # year standardised over the aligned items that have one (a: 1990, b: 2000); missing -> 0
    years = np.array([1990.0, 2000.0])
    z = (years - years.mean()) / years.std()
    assert f.numeric[[2, 4], 0] == pytest.approx(z) and f.numeric[[0, 1, 3], 0].tolist() == [0, 0, 0]


def test_duplicate_ids_and_bad_numbers_are_named(tmp_path):
    frame = pl.DataFrame({"item": ["a", "a"], "genres": ["x", "y"]})
    with pytest.raises(ValueError, match="items.csv: id 'a' appears more than once"):
        align_features(FeatureTable(frame, "item", ("genres",), source="items.csv"), ["a"])
    path = tmp_path / "items.csv"
    path.write_text("item,year\na,1990\nb,nineteen\n")
    with pytest.raises(ValueError, match=r"items.csv: column 'year' must be numeric, got 'nineteen'"):
        read_feature_table(FeatureFile(str(path), "item", numeric=("year",)))
    with pytest.raises(ValueError, match="unknown column"):
        read_feature_table(FeatureFile(str(path), "item", categorical=("genre",)))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_feature_table(FeatureFile(str(tmp_path / "nope.csv"), "item", numeric=("year",)))
    with pytest.raises(ValueError, match="at least one"):
        FeatureFile(str(path), "item")


def test_read_feature_file_round_trip(tmp_path):
    path = tmp_path / "users.tsv"
    path.write_text("user\tgender\tage\n1\tF\t25\n2\tM\t\n")
    table = read_feature_table(FeatureFile(str(path), "user", categorical=("gender",), numeric=("age",)))
    f = align_features(table, ["2", "1", "3"])
    gender = f.categorical["gender"][:, 0]
    assert [f.values["gender"][g - FIRST_VALUE] if g >= FIRST_VALUE else None for g in gender] == [
        "M",
        "F",
        None,
    ]
    assert f.numeric[:, 0].tolist() == [0.0, 0.0, 0.0]  # one known age: standardised to 0
