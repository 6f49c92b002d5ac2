"""Hugging Face BERT checkpoints: name mapping, import and export.

Import reads `config.json` + `model.safetensors` (or `pytorch_model.bin`, loaded with
`weights_only=True`, never unpickling code), accepts keys with or without the `bert.` prefix, ignores the
`position_ids` buffer, and maps the MLM / NSP / classifier heads when they are present. Export writes a
directory that `transformers` loads with `from_pretrained`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from seqbert.model.bert import Bert, BertConfig
from seqbert.model.heads import (
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
)

# seqbert core name <- HF core name (after stripping the `bert.` prefix); {i} is the layer index
_CORE = {
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.segment.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "attn.out.weight": "attention.output.dense.weight",
    "attn.out.bias": "attention.output.dense.bias",
    "attn_norm.weight": "attention.output.LayerNorm.weight",
    "attn_norm.bias": "attention.output.LayerNorm.bias",
    "ffn.up.weight": "intermediate.dense.weight",
    "ffn.up.bias": "intermediate.dense.bias",
    "ffn.down.weight": "output.dense.weight",
    "ffn.down.bias": "output.dense.bias",
    "ffn_norm.weight": "output.LayerNorm.weight",
    "ffn_norm.bias": "output.LayerNorm.bias",
}
# seqbert head name <- HF head name (HF keeps these outside the `bert.` prefix)
_HEADS = {
    "pooler.dense.weight": "bert.pooler.dense.weight",
    "pooler.dense.bias": "bert.pooler.dense.bias",
    "mlm.transform.weight": "cls.predictions.transform.dense.weight",
    "mlm.transform.bias": "cls.predictions.transform.dense.bias",
    "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm.decoder.bias": "cls.predictions.bias",
    "nsp.weight": "cls.seq_relationship.weight",
    "nsp.bias": "cls.seq_relationship.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}


def config_from_hf(hf: dict) -> BertConfig:
    """BertConfig from a Hugging Face `config.json` dict; unsupported variants fail loudly."""
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"config.json hidden_act={act!r}: seqbert implements BERT's exact (erf) 'gelu' only")
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"config.json position_embedding_type={pos!r}: only 'absolute' is supported")
    return BertConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_id=hf.get("pad_token_id", 0) or 0,
        initializer_range=hf.get("initializer_range", 0.02),
    )


def config_to_hf(config: BertConfig) -> dict:
    needed = {"layout": "bert", "pre_ln": False, "causal": False}  # what HF BERT is: post-LN, bidirectional
    unlike = [f"{f}={getattr(config, f)!r}" for f, v in needed.items() if getattr(config, f) != v]
    if unlike:
        raise ValueError(
            f"cannot export a model with {', '.join(unlike)} to Hugging Face BERT: "
            "it needs layout='bert', pre_ln=False, causal=False"
        )
    return {
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_len,
        "type_vocab_size": max(config.type_vocab_size, 1),
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_id,
        "initializer_range": config.initializer_range,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def read_hf_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """Raw tensors of a HF checkpoint directory (safetensors preferred, else pytorch_model.bin)."""
    directory = Path(directory)
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.exists():
        try:
            return load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for truncated headers
            raise ValueError(f"{st}: not a readable safetensors file ({e})") from e
    if pt.exists():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory}: expected model.safetensors or pytorch_model.bin")


def state_from_hf(hf_state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """HF tensor names -> seqbert names (`bert.*` for the core, `pooler.*`, `mlm.*`, `nsp.*`, `classifier.*`)."""
    # normalise: add the `bert.` prefix to bare encoder keys, old TF names gamma/beta -> weight/bias
    src = {}
    for k, v in hf_state.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if k.startswith(("embeddings.", "encoder.", "pooler.")):
            k = "bert." + k
        src[k] = v
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _CORE.items():
        if "bert." + theirs in src:
            out["bert." + ours] = src.pop("bert." + theirs)
    for i in range(num_layers):
        p = f"bert.encoder.layer.{i}."
        qkv = [p + f"attention.self.{n}" for n in ("query", "key", "value")]
        out[f"bert.layers.{i}.attn.qkv.weight"] = torch.cat([src.pop(n + ".weight") for n in qkv])  # (3H, H)
        out[f"bert.layers.{i}.attn.qkv.bias"] = torch.cat([src.pop(n + ".bias") for n in qkv])  # (3H,)
        for ours, theirs in _LAYER.items():
            out[f"bert.layers.{i}.{ours}"] = src.pop(p + theirs)
    for ours, theirs in _HEADS.items():
        if theirs in src:
            out[ours] = src.pop(theirs)
    src.pop("cls.predictions.decoder.bias", None)  # a second name for cls.predictions.bias
    src.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
    leftover = [k for k in src if not k.endswith("position_ids")]
    if leftover:
        raise ValueError(f"unexpected tensors in the Hugging Face checkpoint: {sorted(leftover)[:8]}")
    return out


def state_to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """seqbert names -> HF names (inverse of `state_from_hf`), with the `bert.` prefix."""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _CORE.items():
        if "bert." + ours in state:
            out["bert." + theirs] = state["bert." + ours]
    for i in range(num_layers):
        p = f"bert.encoder.layer.{i}."
        q, k, v = state[f"bert.layers.{i}.attn.qkv.weight"].chunk(3)
        qb, kb, vb = state[f"bert.layers.{i}.attn.qkv.bias"].chunk(3)
        for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            out[p + f"attention.self.{name}.weight"] = w
            out[p + f"attention.self.{name}.bias"] = b
        for ours, theirs in _LAYER.items():
            out[p + theirs] = state[f"bert.layers.{i}.{ours}"]
    for ours, theirs in _HEADS.items():
        if ours in state:
            out[theirs] = state[ours]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def _as_composite_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if isinstance(model, Bert):
        state = {"bert." + k: v for k, v in state.items()}
    state.pop("mlm.decoder.weight", None)  # tied to bert.embeddings.word.weight
    return state


def load_hf_model(directory: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, list[str]]:
    """Load a HF BERT checkpoint into `model` (default: a bare `Bert` core built from config.json).

    Returns the model and the names of its tensors that the checkpoint did not provide (fresh heads, e.g.
    a classifier on top of an encoder-only checkpoint). Core tensors must all be present.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: a Hugging Face BERT directory needs config.json")
    config = config_from_hf(json.loads(config_path.read_text()))
    state = state_from_hf(read_hf_state(directory), config.num_layers)
    if model is None:
        model = Bert(config)
    elif model.config != config and _sizes(model.config) != _sizes(config):
        raise ValueError(f"model config {model.config} does not match {config_path}: {config}")
    target = model.state_dict()
    if isinstance(model, Bert):
        state = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    missing_core = [k for k in target if k not in state and re.match(r"(bert\.)?(embeddings|layers)\.", k)]
    if missing_core:
        raise ValueError(f"{directory}: checkpoint lacks core tensors {missing_core[:8]}")
    for k, v in state.items():
        if k in target and target[k].shape != v.shape:
            raise ValueError(
                f"{directory}: tensor {k} has shape {tuple(v.shape)}, model expects {tuple(target[k].shape)}"
            )
    usable = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(usable, strict=False)
    fresh = [k for k in target if k not in usable and k != "mlm.decoder.weight"]
    return model, fresh


def _sizes(config: BertConfig) -> tuple:
    return (
        config.vocab_size,
        config.hidden_size,
        config.num_layers,
        config.num_heads,
        config.intermediate_size,
    )


def save_hf_model(model: nn.Module, directory: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` that `transformers.AutoModel*.from_pretrained` loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: BertConfig = model.config
    hf = config_to_hf(config)
    if isinstance(model, Bert):
        hf["architectures"] = ["BertModel"]
    elif isinstance(model, BertForPreTraining):
        hf["architectures"] = ["BertForPreTraining" if model.nsp is not None else "BertForMaskedLM"]
    elif isinstance(model, BertForSequenceClassification):
        hf["architectures"] = ["BertForSequenceClassification"]
        hf["num_labels"] = model.num_labels
    elif isinstance(model, BertForTokenClassification):
        hf["architectures"] = ["BertForTokenClassification"]
        hf["num_labels"] = model.num_labels
    else:
        raise TypeError(f"cannot export {type(model).__name__} as a Hugging Face BERT")
    state = state_to_hf(_as_composite_state(model), config.num_layers)
    if isinstance(model, Bert):
        state = {k.removeprefix("bert."): v for k, v in state.items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    return directory
