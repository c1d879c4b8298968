import json

import pytest

from pis_tui.errors import UserError
from pis_tui.model.spec import load_model_spec, load_preset_config, spec_from_config


def write(tmp_path, cfg, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


def test_directory_and_config_path(tmp_path):
    cfg = load_preset_config("llama-3.1-8b")
    write(tmp_path, cfg)
    a = load_model_spec(str(tmp_path))
    b = load_model_spec(str(tmp_path / "config.json"))
    assert a.hidden_size == b.hidden_size == 4096 and a.num_kv_heads == 8


def test_head_dim_missing_or_different():
    cfg = dict(load_preset_config("qwen2.5-0.5b"))
    cfg.pop("head_dim", None)
    assert spec_from_config(cfg, "x").head_dim == 896 // 14
    cfg["head_dim"] = 128
    assert spec_from_config(cfg, "x").head_dim == 128


def test_multimodal_uses_text_config():
    text = dict(load_preset_config("llama-3.2-1b"))
    cfg = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
           "text_config": text, "vision_config": {"hidden_size": 1024}}
    s = spec_from_config(cfg, "mm")
    assert s.hidden_size == 2048 and s.num_layers == 16


def test_an_moe_config_is_read_for_its_experts():
    """Mistral's widths with eight experts of two per token: a Mixtral-layout MoE spec (MoE
    configs were refused until their law was priced: tests/test_moe.py)."""
    cfg = dict(load_preset_config("mistral-7b-v0.3"), num_local_experts=8, num_experts_per_tok=2,
               architectures=["MixtralForCausalLM"], model_type="mixtral")
    spec = spec_from_config(cfg, "mixtral")
    assert (spec.moe.experts, spec.moe.top_k, spec.moe.expert_inter) == (8, 2, 14336)
    with pytest.raises(UserError, match="more than the 8 experts"):
        spec_from_config(dict(cfg, num_experts_per_tok=9), "mixtral")


def test_non_decoder_rejected():
    with pytest.raises(UserError, match="decoder-only"):
        spec_from_config({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 768,
                          "num_hidden_layers": 12, "num_attention_heads": 12,
                          "intermediate_size": 3072, "vocab_size": 30522}, "bert")
    with pytest.raises(UserError, match="decoder-only"):
        spec_from_config({"model_type": "t5", "is_encoder_decoder": True}, "t5")


def test_malformed_and_missing(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed JSON"):
        load_model_spec(str(tmp_path))
    with pytest.raises(UserError, match="no config.json"):
        load_model_spec(str(tmp_path / "sub")) if (tmp_path / "sub").mkdir() is None else None
    with pytest.raises(UserError, match="no such file"):
        load_model_spec(str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="unknown model"):
        load_model_spec("llama-9")
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_model_spec("someorg/some-model")
    (tmp_path / "weights.bin").write_bytes(b"\x00\x93\xff" * 10)  # a binary file typed as the model
    with pytest.raises(UserError, match="not a text file"):
        load_model_spec(str(tmp_path / "weights.bin"))
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(5 << 20)  # sparse: the size is checked before anything is read
    with pytest.raises(UserError, match="is not a model config"):
        load_model_spec(str(big))


def test_missing_field_is_a_clear_error(tmp_path):
    cfg = dict(load_preset_config("llama-3.1-8b"))
    del cfg["intermediate_size"]
    with pytest.raises(UserError, match="intermediate_size"):
        spec_from_config(cfg, "broken")
    cfg = dict(load_preset_config("llama-3.1-8b"), num_key_value_heads=5)
    with pytest.raises(UserError, match="does not divide"):
        spec_from_config(cfg, "broken")


def test_hf_cache_model(tmp_path, monkeypatch):
    """A model id in the local HF cache is read through transformers AutoConfig, offline."""
    hub = tmp_path / "hub"
    snap = hub / "models--acme--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    cfg = dict(load_preset_config("qwen2.5-0.5b"))
    cfg.pop("_source", None)
    cfg.pop("_source_note", None)
    (snap / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    from pis_tui.model.spec import hf_cache_models
    assert "acme/tiny" in hf_cache_models()
    s = load_model_spec("acme/tiny")
    assert s.hidden_size == 896 and s.source == "hf-cache:acme/tiny"
