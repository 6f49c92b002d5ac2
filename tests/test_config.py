"""YAML -> frozen dataclass configs: unknown keys and bad types are named, overrides apply."""

import pytest

from seqbert.config import ConfigError, load_config
from seqbert.model import BertConfig
from seqbert.training.loop import TrainConfig


def test_overrides_and_numeric_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 10\nlr: 1e-4\nbetas: [0.9, 0.98]\n")
    cfg = load_config(TrainConfig, path, ["warmup_steps=2", "clip_norm=null"])
    assert cfg.lr == 1e-4 and cfg.betas == (0.9, 0.98) and cfg.warmup_steps == 2 and cfg.clip_norm is None


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 10\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*learning_rate"):
        load_config(TrainConfig, path)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="num_heads"):
        load_config(BertConfig, None, ["vocab_size=10", "hidden_size=30", "num_heads=7"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(BertConfig, None, ["vocab_size=ten"])
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(TrainConfig, None, ["lr=0.1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(TrainConfig, None, ["max_steps"])
