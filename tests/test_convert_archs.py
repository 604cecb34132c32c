"""supercal convert for architectures other than GPT-J: Hugging Face-style llama, qwen2, phi3 and gpt2 checkpoints
(safetensors and PyTorch .bin written in the tests, no torch) convert to folders whose logits equal the original
model's; mlx-lm's own sanitize does the renaming (and GPT-2's transposes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import supercal_mlx  # noqa: F401
from archs import create_model, hf_checkpoint, make_tokenizer
from conftest import TOKENIZER_TEXTS
from supercal_mlx.convert import convert
from supercal_mlx.errors import SupercalError

import mlx.core as mx  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("convert-archs")
    out = {}
    for arch in ("llama", "qwen2", "phi3", "gpt2"):
        tok = make_tokenizer(arch, TOKENIZER_TEXTS, root / f"{arch}-tok", gpt2_dir=tiny_tokenizer_dir)
        out[arch] = create_model(arch, root / arch, tok, seed=4)
    return out


def logits(folder, ids):
    from mlx_lm import load

    model, _ = load(str(folder))
    return np.array(model(mx.array(ids)).astype(mx.float32))


IDS = [[5, 17, 42, 99, 3, 120, 7]]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_converted_logits_equal_the_original(models, tmp_path, arch, fmt):
    src = hf_checkpoint(models[arch], tmp_path / "hf", fmt=fmt)
    out = convert(str(src), tmp_path / "out", dtype="float32")
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names and "config.json" in names
    # the same float32 weights on the same device: only the layout changed, so the logits are bit-identical
    assert np.array_equal(logits(out, IDS), logits(models[arch], IDS))


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.05), ("float16", 0.01)])
def test_half_sources_and_outputs(models, tmp_path, dtype, tol):
    src = hf_checkpoint(models["llama"], tmp_path / "hf", fmt="bin", dtype=dtype)
    out = convert(str(src), tmp_path / "out", dtype=dtype)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization" not in cfg
    # rounding the weights to 8 (bfloat16) or 11 (float16) significant bits: logits of magnitude ~0.5 move
    # by about that relative amount
    assert np.abs(logits(out, IDS) - logits(models["llama"], IDS)).max() < tol


def test_quantized_llama_loads_and_runs(models, tmp_path):
    import mlx.nn as nn
    from mlx_lm import load

    src = hf_checkpoint(models["qwen2"], tmp_path / "hf")
    out = convert(str(src), tmp_path / "q", dtype="float32", quantize=True, q_bits=8, q_group_size=32)
    model, _ = load(str(out))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)  # the tied head is quantized with it
    err = np.abs(logits(out, IDS) - logits(models["qwen2"], IDS)).max()
    assert 0 < err < 0.05


def test_checkpoint_tensors_checked_by_name(models, tmp_path):
    import mlx.core as mx

    src = hf_checkpoint(models["llama"], tmp_path / "hf")
    w = mx.load(str(src / "model.safetensors"))
    w.pop("model.layers.1.mlp.up_proj.weight")
    mx.save_safetensors(str(src / "model.safetensors"), w)
    with pytest.raises(SupercalError, match="lacks 1 tensor.*model.layers.1.mlp.up_proj.weight"):
        convert(str(src), tmp_path / "out")
    w["model.layers.1.mlp.up_proj.weight"] = mx.zeros((64, 31))
    mx.save_safetensors(str(src / "model.safetensors"), w)
    with pytest.raises(SupercalError, match=r"up_proj.weight has shape \[64, 31\], but config.json implies \[64, 32\]"):
        convert(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sanitize_that_combines_tensors_is_refused(tmp_path):
    """Mixtral's sanitize stacks the experts' weights: not tensor by tensor, so refused with the alternative."""
    src = tmp_path / "mixtral"
    src.mkdir()
    cfg = dict(model_type="mixtral", hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=4,
               num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1, rms_norm_eps=1e-5, vocab_size=50)
    (src / "config.json").write_text(json.dumps(cfg))
    w = {f"model.layers.0.block_sparse_moe.experts.{e}.w{k}.weight": mx.zeros((64, 32) if k != 2 else (32, 64))
         for e in range(2) for k in (1, 2, 3)}
    mx.save_safetensors(str(src / "model.safetensors"), w)
    (src / "tokenizer.json").write_text("{}")
    with pytest.raises(SupercalError, match="sanitize (combines|computes).*mlx_lm.convert"):
        convert(str(src), tmp_path / "out")


def test_transformers5_rope_parameters_are_read(models, tmp_path):
    """transformers 5 writes rope_parameters, which mlx-lm's Llama does not read: convert writes rope_theta."""
    tok = models["llama"]
    base = create_model("llama", tmp_path / "theta", tok, seed=5, rope_theta=500000.0)
    src = hf_checkpoint(base, tmp_path / "hf", transformers5=True)
    assert "rope_theta" not in json.loads((src / "config.json").read_text())
    out = convert(str(src), tmp_path / "out", dtype="float32")
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 500000.0
    ids = [list(range(3, 60))]  # long enough for the rotary frequencies to matter
    assert np.array_equal(logits(out, ids), logits(base, ids))
    assert not np.allclose(logits(base, ids), logits(models["llama"], ids))
