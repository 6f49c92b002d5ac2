"""The core: config validation, SDPA == eager reference, gathered MLM == full MLM, heads, padding; the
inference fast paths (oneDNN linear, length groups) == the reference."""

import pytest
import torch

import seqbert.model.bert as bert_module
from seqbert.model import (
    IGNORE_INDEX,
    Bert,
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
)

# tiny odd sizes, as in HF's tests: vocab 99, length 7, batch 13
TINY = BertConfig(vocab_size=99, hidden_size=30, num_layers=2, num_heads=5, intermediate_size=37, max_len=16)


def batch(B=13, L=7, seed=0, pad_left=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 99, (B, L), generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    pos = torch.arange(L)
    mask = (pos[None, :] >= L - lengths[:, None]) if pad_left else (pos[None, :] < lengths[:, None])
    ids = ids.masked_fill(~mask, 0)
    types = torch.randint(0, 2, (B, L), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask.long(), "token_type_ids": types}


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("num_heads", 7, "divisible"),
        ("hidden_size", 0, "hidden_size"),
        ("num_layers", -1, "num_layers"),
        ("dropout", 1.5, "dropout"),
        ("pad_id", 99, "pad_id"),
        ("vocab_size", 2.5, "vocab_size"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value, match):
    kwargs = dict(vocab_size=99, hidden_size=30, num_heads=5)
    kwargs[field] = value
    with pytest.raises(ValueError, match=match):
        BertConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TINY.hidden_size = 4  # type: ignore[misc]


@pytest.mark.parametrize("layout,pre_ln", [("bert", False), ("bert", True), ("sasrec", False)])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equals_eager_reference(layout, pre_ln, causal):
    config = BertConfig(**{**TINY.__dict__, "layout": layout, "pre_ln": pre_ln, "causal": causal})
    model = Bert(config).eval()
    b = batch(pad_left=causal)
    with torch.no_grad():
        fast = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        model.set_attention(sdpa=False)
        slow = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert fast.shape == (13, 7, 30)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_sdpa_equals_eager_gradients():
    model = Bert(TINY).eval()
    b = batch()
    model(b["input_ids"], b["attention_mask"]).pow(2).sum().backward()
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_attention(sdpa=False)
    model(b["input_ids"], b["attention_mask"]).pow(2).sum().backward()
    for f, p in zip(fast, model.parameters()):
        torch.testing.assert_close(f, p.grad, atol=1e-4, rtol=1e-4)


def test_padding_does_not_change_real_positions():
    model = Bert(TINY).eval()
    ids = torch.randint(2, 99, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 2, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        short = model(ids)
        long = model(padded, mask)
    torch.testing.assert_close(short, long[:, :5], atol=1e-5, rtol=1e-5)


def test_causal_attention_does_not_see_the_future():
    model = Bert(BertConfig(**{**TINY.__dict__, "causal": True})).eval()
    ids = torch.randint(2, 99, (2, 7))
    changed = ids.clone()
    changed[:, 4:] = torch.randint(2, 99, (2, 3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, :4], model(changed)[:, :4])


def test_empty_sequence_and_overlong_input_are_rejected():
    model = Bert(TINY)
    with pytest.raises(ValueError, match="all padding"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 17, dtype=torch.long))


def test_segments_are_optional():
    config = BertConfig(**{**TINY.__dict__, "type_vocab_size": 0})
    model = Bert(config)
    assert model.embeddings.segment is None
    assert model(batch()["input_ids"]).shape == (13, 7, 30)


def test_gathered_mlm_equals_full_logits_and_loss():
    model = BertForPreTraining(TINY).eval()
    b = batch()
    labels = torch.full_like(b["input_ids"], IGNORE_INDEX)
    chosen = (torch.rand(b["input_ids"].shape, generator=torch.Generator().manual_seed(1)) < 0.3) & (
        b["attention_mask"] == 1
    )
    labels[chosen] = b["input_ids"][chosen]
    b = {**b, "labels": labels, "next_sentence_label": torch.randint(0, 2, (13,))}
    with torch.no_grad():
        fast = model(b)
        slow = model(b, all_positions=True)
    M = int(chosen.sum())
    assert fast.mlm_logits.shape == (M, 99)
    assert slow.mlm_logits.shape == (13 * 7, 99)
    torch.testing.assert_close(fast.mlm_logits, slow.mlm_logits[chosen.reshape(-1)], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.mlm_loss, slow.mlm_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast.loss, fast.mlm_loss + fast.nsp_loss)


def test_decoder_is_tied_to_word_embeddings():
    model = BertForPreTraining(TINY)
    assert model.mlm.decoder.weight is model.bert.embeddings.word.weight
    assert model.mlm.decoder.weight.data_ptr() == model.bert.embeddings.word.weight.data_ptr()


def test_classifier_heads_shapes_and_losses():
    b = batch()
    seq = BertForSequenceClassification(TINY, num_labels=3)
    out = seq({**b, "labels": torch.randint(0, 3, (13,))})
    assert out.logits.shape == (13, 3) and out.loss.ndim == 0
    tok = BertForTokenClassification(TINY, num_labels=4)
    labels = torch.randint(0, 4, (13, 7)).masked_fill(b["attention_mask"] == 0, IGNORE_INDEX)
    out = tok({**b, "labels": labels})
    assert out.logits.shape == (13, 7, 4) and torch.isfinite(out.loss)
    reg = BertForSequenceClassification(TINY, num_labels=1)
    assert reg({**b, "labels": torch.rand(13)}).logits.shape == (13, 1)


def test_fast_inference_linear_equals_nn_linear_and_gelu(monkeypatch):
    """CPU fp32 inference runs `linear` as one oneDNN call (bias and GELU fused); same numbers as the
    autograd path (nn.Linear + F.gelu), for the whole model too."""
    if not bert_module._ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(30, 37)
    x = torch.randn(13, 7, 30, generator=g)
    with torch.inference_mode():
        for gelu in (False, True):
            ref = torch.nn.functional.gelu(layer(x)) if gelu else layer(x)
            torch.testing.assert_close(bert_module.linear(x, layer, gelu), ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                bert_module.linear(x.transpose(0, 1), layer, gelu), ref.transpose(0, 1)
            )
    model = BertForPreTraining(TINY).eval()
    b = {**batch(), "labels": batch(seed=1)["input_ids"]}
    with torch.inference_mode():
        fast = model(b, compute_loss=False).mlm_logits
        monkeypatch.setattr(bert_module, "_ONEDNN_LINEAR", False)
        ref = model(b, compute_loss=False).mlm_logits
    assert not torch.equal(fast, torch.zeros_like(fast))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_fast_linear_is_skipped_under_autograd_and_autocast():
    layer = torch.nn.Linear(30, 37)
    x = torch.randn(5, 30)
    assert bert_module.linear(x, layer).requires_grad  # autograd: nn.Linear, differentiable
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert bert_module.linear(x, layer).dtype == torch.bfloat16  # autocast: nn.Linear, cast to bf16


def test_compute_loss_false_returns_the_same_logits_without_loss():
    model = BertForPreTraining(TINY).eval()
    b = {**batch(), "labels": batch(seed=1)["input_ids"], "next_sentence_label": torch.randint(0, 2, (13,))}
    with torch.no_grad():
        full, bare = model(b), model(b, compute_loss=False)
    assert bare.loss is None and bare.mlm_loss is None and bare.nsp_loss is None
    torch.testing.assert_close(bare.mlm_logits, full.mlm_logits)


def varied_lengths(B=64, L=64, left=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.cat(
        [torch.randint(1, 5, (B // 2,), generator=g), torch.randint(L - 8, L + 1, (B - B // 2,), generator=g)]
    )
    lengths = lengths[torch.randperm(B, generator=g)]
    pos = torch.arange(L)
    mask = (pos[None, :] >= L - lengths[:, None]) if left else (pos[None, :] < lengths[:, None])
    ids = torch.randint(2, 99, (B, L), generator=g).masked_fill(~mask, 0)
    types = torch.randint(0, 2, (B, L), generator=g) * mask
    return ids, mask.long(), types


@pytest.mark.parametrize("left", [True, False])
def test_length_groups_partition_rows_and_cover_their_tokens(left):
    _, mask, _ = varied_lengths(left=left)
    groups = bert_module.length_groups(mask, hidden_size=30)
    assert len(groups) > 1  # short and long rows: grouping pays under the cost model
    rows = torch.cat([r for r, _, _ in groups])
    assert sorted(rows.tolist()) == list(range(64))
    for r, first, last in groups:
        assert not mask[r][:, :first].any() and not mask[r][:, last:].any()


@pytest.mark.parametrize("causal,left", [(False, False), (False, True), (True, True)])
def test_grouped_eval_equals_whole_batch_at_real_positions(causal, left):
    config = BertConfig(**{**TINY.__dict__, "causal": causal, "pre_ln": causal, "max_len": 64})
    model = Bert(config).eval()
    ids, mask, types = varied_lengths(left=left)
    assert len(bert_module.length_groups(mask, config.hidden_size)) > 1
    with torch.no_grad():
        whole = model(ids, mask, types)
        model.group_by_length = True
        grouped = model(ids, mask, types)
        # a left-padded batch whose first column was dropped: positions shifted by position_offset
        cut = slice(1, None) if left else slice(None, -1)
        grouped_cut = model(ids[:, cut], mask[:, cut], types[:, cut], position_offset=int(left))
        model.group_by_length = False
        whole_cut = model(ids[:, cut], mask[:, cut], types[:, cut], position_offset=int(left))
    real = mask.bool()
    torch.testing.assert_close(grouped[real], whole[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped_cut[real[:, cut]], whole_cut[real[:, cut]], atol=1e-5, rtol=1e-5)
    model.group_by_length = True
    with pytest.raises(ValueError, match="all padding"):
        model(ids, mask * 0)


@pytest.mark.parametrize(
    "layout,pre_ln,causal,layers",
    [
        ("bert", False, False, 2),
        ("bert", True, True, 2),
        ("bert", False, True, 1),
        ("bert", True, False, 3),
        ("sasrec", False, True, 2),
    ],
)
def test_encode_last_equals_the_full_encoding_at_the_last_column(layout, pre_ln, causal, layers):
    """The recommenders' query path: only the last column goes through the last layer after its keys and
    values, with left padding, a shifted position offset, full rows (no mask) and under autograd."""
    config = BertConfig(
        **{
            **TINY.__dict__,
            "layout": layout,
            "causal": causal,
            "pre_ln": pre_ln,
            "num_layers": layers,
            "max_len": 64,
        }
    )
    model = Bert(config).eval()
    ids, mask, _ = varied_lengths(left=True)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_last(ids, mask), model.encode(ids, mask)[:, -1], atol=1e-5, rtol=1e-5
        )
        shifted = model.encode_last(ids[:, 1:], mask[:, 1:], position_offset=1)
        torch.testing.assert_close(
            shifted, model.encode(ids[:, 1:], mask[:, 1:], position_offset=1)[:, -1], atol=1e-5, rtol=1e-5
        )
        full = torch.ones_like(mask)
        torch.testing.assert_close(
            model.encode_last(ids, full), model.encode(ids, full)[:, -1], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(model.encode_last(ids), model.encode(ids)[:, -1], atol=1e-5, rtol=1e-5)
    # under autograd (plain nn.Linear instead of the oneDNN call) and the gradient reaches every layer
    out = model.encode_last(ids, mask)
    torch.testing.assert_close(out, model.encode(ids, mask)[:, -1], atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert model.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.layers[-1].attn.qkv.weight.grad[: config.hidden_size].abs().sum() > 0


@pytest.mark.slow
def test_inference_compiles_with_torch_compile():
    """torch.compile traces the nn.Linear path (inductor cannot lower the oneDNN call it would meet)."""
    model = Bert(TINY).eval()
    b = batch()
    with torch.inference_mode():
        compiled = torch.compile(model, dynamic=False)(b["input_ids"], b["attention_mask"])
        torch.testing.assert_close(compiled, model(b["input_ids"], b["attention_mask"]), atol=1e-5, rtol=1e-5)


def test_sasrec_layout_equals_a_transcription_of_the_sasrec_reference_code():
    """layout="sasrec" == pmixer/SASRec.pytorch's forward as Klenitskiy & Vasilev use it (src/models.py of
    antklen/sasrec-bert4rec-recsys23), transcribed here with torch's MultiheadAttention on our weights:
    seqs = emb * sqrt(H) + pos; per block Q = LN(seqs); seqs = Q + MHA(Q, seqs, seqs, causal);
    seqs = LN(seqs); seqs = seqs + W2 relu(W1 seqs); then the last LayerNorm. Full rows: no padding."""
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=32, max_len=16,
        type_vocab_size=0, dropout=0.0, attention_dropout=0.0, layout="sasrec", causal=True,
    )  # fmt: skip
    model = Bert(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped or misplaced one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(2, 99, (5, 9), generator=torch.Generator().manual_seed(3))
    H, L = 32, 9
    with torch.no_grad():
        seqs = model.embeddings.word(ids) * H**0.5 + model.embeddings.position.weight[:L]
        causal = ~torch.ones(L, L, dtype=torch.bool).tril()
        for layer in model.layers:
            mha = torch.nn.MultiheadAttention(H, 2, batch_first=True)
            mha.in_proj_weight.copy_(layer.attn.qkv.weight)
            mha.in_proj_bias.copy_(layer.attn.qkv.bias)
            mha.out_proj.weight.copy_(layer.attn.out.weight)
            mha.out_proj.bias.copy_(layer.attn.out.bias)
            q = layer.attn_norm(seqs)
            seqs = q + mha(q, seqs, seqs, attn_mask=causal, need_weights=False)[0]
            seqs = layer.ffn_norm(seqs)
            seqs = seqs + layer.ffn.down(torch.relu(layer.ffn.up(seqs)))
        reference = model.final_norm(seqs)
        torch.testing.assert_close(model(ids), reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_last(ids), reference[:, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        BertConfig(vocab_size=99, hidden_size=32, num_heads=2, layout="sasrec", pre_ln=True)
    with pytest.raises(ValueError, match="layout"):
        BertConfig(vocab_size=99, hidden_size=32, num_heads=2, layout="gpt")
