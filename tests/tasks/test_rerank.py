"""Cross-encoder: HF import parity (random tiny and the real ms-marco reranker), losses, collate, training."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from seqbert.data.text import encode_texts
from seqbert.model.bert import BertConfig
from seqbert.model.heads import BertForSequenceClassification
from seqbert.tasks.rerank import CrossEncoder, group_collate, load_cross_encoder, rerank

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = "the a cat dog sat on mat ran far and quickly slowly red blue what where is".split()
PASSAGES = [
    "the cat sat on the mat",
    "a dog ran far",
    "red blue red",
    "the dog is on the mat quickly and slowly",
]


def tiny_tokenizer() -> Tokenizer:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tok


def tokenize(tok, query_passage: list[tuple[str, str]], max_len: int) -> dict[str, torch.Tensor]:
    """(query, passage) pairs through the one tokeniser stack, `seqbert.data.text.encode_texts`."""
    return encode_texts(tok, [q for q, _ in query_passage], [p for _, p in query_passage], max_len)


def tiny_hf_reranker(directory: Path):
    config = transformers.BertConfig(
        vocab_size=22, hidden_size=12, num_hidden_layers=2, num_attention_heads=3, intermediate_size=20,
        max_position_embeddings=32, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(3)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tiny_tokenizer().save(str(directory / "tokenizer.json"))
    return model


def tiny_cross_encoder(loss: str = "listwise") -> CrossEncoder:
    config = BertConfig(
        vocab_size=22, hidden_size=12, num_layers=2, num_heads=3, intermediate_size=20, max_len=32
    )
    return CrossEncoder(BertForSequenceClassification(config, num_labels=1), loss)


def test_parity_tiny_random_reranker_equals_transformers(tmp_path):
    theirs = tiny_hf_reranker(tmp_path)
    ours, tok, fresh = load_cross_encoder(tmp_path)
    assert fresh == [] and not ours.training
    scores = rerank(ours, tok, "where is the cat", PASSAGES, batch_size=3)
    batch = tokenize(tok, [("where is the cat", p) for p in PASSAGES], max_len=512)
    with torch.no_grad():
        want = theirs(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(scores, want, atol=1e-5, rtol=0)


def reranker_dir() -> Path:
    """The imported ms-marco-MiniLM-L-12-v2: $SEQBERT_RERANKER_DIR, or the repo's gitignored data_cache."""
    value = os.environ.get("SEQBERT_RERANKER_DIR")
    path = Path(value) if value else Path(__file__).resolve().parents[2] / "data_cache" / "msmarco-minilm-l12"
    if not (path / "config.json").exists():
        pytest.skip(
            f"{path} not found: build it with `make reranker` (shared/tools/onnx_int8_reranker_to_hf.py) "
            "and/or set SEQBERT_RERANKER_DIR"
        )
    return path


def test_parity_msmarco_minilm_l12_reranker_equals_transformers():
    path = reranker_dir()
    ours, tok, fresh = load_cross_encoder(path)
    assert fresh == []
    theirs = transformers.BertForSequenceClassification.from_pretrained(path).eval()
    query = "How many people live in Berlin?"
    passages = [
        "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
        "New York City is famous for the Metropolitan Museum of Art.",
        "Bananas are a good source of potassium. " * 60,  # longer than max_len: truncated the same way
    ]
    scores = rerank(ours, tok, query, passages, batch_size=2, max_len=512)
    batch = tokenize(tok, [(query, p) for p in passages], max_len=512)
    with torch.no_grad():
        want = theirs(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(scores, want, atol=1e-5, rtol=0)
    assert scores[0] > scores[1] and scores[0] > scores[2]


def test_listwise_and_pointwise_losses_match_their_formulas():
    tok = tiny_tokenizer()
    enc = tokenize(tok, [("what is red", p) for p in PASSAGES] * 2, max_len=32)
    batch = {k: v.reshape(2, 4, -1) for k, v in enc.items()}  # (B=2, G=4, L)
    batch["labels"] = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 1.0, 0]])
    for loss in ("listwise", "pointwise"):
        model = tiny_cross_encoder(loss).eval()
        out = model(batch)
        assert out.scores.shape == (2, 4)
        flat = model.classifier({k: v.reshape(8, -1) for k, v in enc.items()}).logits.reshape(2, 4)
        torch.testing.assert_close(out.scores, flat)
        if loss == "pointwise":
            want = F.binary_cross_entropy_with_logits(flat, batch["labels"])
        else:
            log_p = F.log_softmax(flat, dim=1)
            want = (-log_p[0, 0] - (log_p[1, 0] + log_p[1, 2]) / 2) / 2
        torch.testing.assert_close(out.loss, want)


def test_group_collate_puts_the_positive_first_and_samples_from_the_pool():
    tok = tiny_tokenizer()
    queries = ["what is red", "where is the dog"]
    collate = group_collate(tok, queries, PASSAGES, group_size=3, max_len=32)
    raw = {"query": torch.tensor([0, 1]), "positive": torch.tensor([2, 3]),
           "negatives": torch.tensor([[0, 1, 3], [0, 1, -1]])}  # fmt: skip
    batch = collate(raw, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape[:2] == (2, 3) and batch["labels"].tolist() == [[1, 0, 0], [1, 0, 0]]
    pos = tokenize(tok, [("what is red", PASSAGES[2])], 32)["input_ids"][0]
    assert batch["input_ids"][0, 0, : len(pos)].tolist() == pos.tolist()
    second = tokenize(tok, [("where is the dog", PASSAGES[k]) for k in (0, 1)], 32)["input_ids"]
    negs = {tuple(r[r > 0].tolist()) for r in batch["input_ids"][1, 1:]}
    assert negs == {tuple(r[r > 0].tolist()) for r in second}  # pool [0, 1], padding -1 never drawn
    with pytest.raises(ValueError, match="group_size"):
        group_collate(tok, queries, PASSAGES, group_size=1)
    with pytest.raises(ValueError, match="needs 3"):
        group_collate(tok, queries, PASSAGES, group_size=4)(raw, torch.Generator())


def test_training_steps_lower_the_listwise_loss():
    tok = tiny_tokenizer()
    collate = group_collate(tok, ["what is red", "where is the dog"], PASSAGES, group_size=3, max_len=32)
    raw = {
        "query": torch.tensor([0, 1]),
        "positive": torch.tensor([2, 3]),
        "negatives": torch.tensor([[0, 1], [0, 1]]),
    }
    batch = collate(raw, torch.Generator().manual_seed(0))
    model = tiny_cross_encoder("listwise")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(batch).loss.item()
    for _ in range(40):
        opt.zero_grad()
        model(batch).loss.backward()
        opt.step()
    model.eval()
    assert model(batch).loss.item() < 0.5 * first
    scores = rerank(model.classifier, tok, "what is red", PASSAGES)
    assert int(np.argmax(scores)) == 2


def test_bad_inputs():
    config = BertConfig(
        vocab_size=22, hidden_size=12, num_layers=1, num_heads=3, intermediate_size=20, max_len=32
    )
    with pytest.raises(ValueError, match="num_labels=1"):
        CrossEncoder(BertForSequenceClassification(config, num_labels=2))
    with pytest.raises(ValueError, match="loss must be"):
        CrossEncoder(BertForSequenceClassification(config, num_labels=1), "pairwise")
    model = tiny_cross_encoder("listwise")
    enc = tokenize(tiny_tokenizer(), [("a", "b"), ("a", "c")], 32)
    with pytest.raises(ValueError, match=">= 1 positive"):
        model({**{k: v.reshape(1, 2, -1) for k, v in enc.items()}, "labels": torch.zeros(1, 2)})
