import random

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from seqbert.evaluation.ner import entity_scores, extract_entities


def test_entities_of_a_hand_written_sentence():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "B-MISC"]
    # I-LOC after O starts a chunk (conlleval); B-LOC then I-ORG: type change splits the chunk
    assert extract_entities(tags) == {
        ("PER", 0, 1),
        ("LOC", 3, 4),
        ("LOC", 5, 5),
        ("ORG", 6, 6),
        ("MISC", 7, 7),
    }


def test_hand_computed_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-MISC"]]
    scores = entity_scores(gold, pred)
    # gold: PER(0-1), LOC(3), ORG; pred: PER(0-1), ORG(3), ORG, MISC -> 2 correct of 4 predicted, 3 gold
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert scores["f1_PER"] == 1.0 and scores["f1_LOC"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_seqeval_on_random_tag_sequences(seed):
    rng = random.Random(seed)
    tags = ["O"] + [f"{p}-{t}" for p in "BI" for t in ("PER", "LOC", "ORG", "MISC")]
    gold, pred = [], []
    for _ in range(200):
        n = rng.randint(1, 12)
        g = [rng.choice(tags) for _ in range(n)]
        # predictions: mostly the gold tag, sometimes a random (possibly ill-formed) tag
        p = [t if rng.random() < 0.7 else rng.choice(tags) for t in g]
        gold.append(g)
        pred.append(p)
    ours = entity_scores(gold, pred)
    assert ours["precision"] == pytest.approx(precision_score(gold, pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall_score(gold, pred), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12)


def test_bad_tags_and_lengths_fail_clearly():
    with pytest.raises(ValueError, match="not O or B-"):
        extract_entities(["X-PER"])
    with pytest.raises(ValueError, match="sentence 0"):
        entity_scores([["O", "O"]], [["O"]])
