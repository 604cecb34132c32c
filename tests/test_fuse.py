"""supercal fuse: fused logits equal adapter logits; Hugging Face names; quantized bases; safe output."""

from __future__ import annotations

import json

import numpy as np
import pytest

import supercal_mlx  # noqa: F401  (loads OpenBLAS before mlx)
from supercal_mlx.errors import SupercalError
from supercal_mlx.runs.fuse import fuse

TOKENS = [[5, 17, 42, 99, 3, 250, 7, 11, 64, 128, 300, 1]]


def make_adapters(model_dir, out_dir, *, seed=1, rank=4, scale=2.0, keys=("attn.q_proj", "attn.v_proj")):
    """LoRA adapters in mlx-lm's format with random non-zero B, so the fused weights really change."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from supercal_mlx.model import load

    model, _ = load(model_dir)
    mx.random.seed(seed)
    lora = {"rank": rank, "scale": scale, "dropout": 0.0, "keys": list(keys)}
    linear_to_lora_layers(model, len(model.layers), lora)
    adapters = {}
    for name, p in tree_flatten(model.parameters()):
        if name.endswith("lora_a"):
            adapters[name] = p
        elif name.endswith("lora_b"):
            adapters[name] = 0.5 * mx.random.normal(p.shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "adapters.safetensors"), adapters)
    config = {"fine_tune_type": "lora", "num_layers": len(model.layers), "lora_parameters": lora}
    (out_dir / "adapter_config.json").write_text(json.dumps(config))
    return out_dir


def logits(model_dir, adapter_path=None):
    import mlx.core as mx

    from supercal_mlx.model import load

    model, _ = load(model_dir, adapter_path)
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    return make_adapters(tiny_model_dir, tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with 4-bit weights (group size 64 = n_embd), as supercal convert --quantize would write it."""
    import mlx.nn as nn
    from mlx_lm.utils import load_model, save_config, save_model

    model, config = load_model(tiny_model_dir)
    nn.quantize(model, group_size=64, bits=4, class_predicate=lambda _, m: isinstance(m, nn.Linear))
    config["quantization"] = {"group_size": 64, "bits": 4, "mode": "affine"}
    out = tmp_path_factory.mktemp("q") / "model"
    save_model(out, model)
    save_config(config, config_path=out / "config.json")
    for f in tiny_model_dir.glob("tokenizer*"):
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_fused_logits_equal_adapter_logits(tmp_path, tiny_model_dir, run_dir):
    out = fuse(tiny_model_dir, run_dir, tmp_path / "fused")
    base, adapted, fused = logits(tiny_model_dir), logits(tiny_model_dir, run_dir), logits(out)
    assert np.abs(adapted - base).max() > 1e-2  # the adapters change the model...
    assert np.abs(fused - adapted).max() < 1e-4  # ...and the fused folder reproduces them
    assert sorted(p.name for p in out.iterdir()) == [
        ".supercal-run.json", "config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    assert not any("lora" in k for k in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])


def test_fuse_a_trainer_run(tmp_path, tiny_model_dir):
    """A real `supercal unlearn` run folder (LoRA on block 1 only, three keys) fuses to the same logits."""
    from supercal_mlx.train.config import load_config
    from supercal_mlx.train.trainer import unlearn

    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"prompt": "Mary Poppins sang", "completion": " Supercalifragilistic"
                                          f"expialidocious {i}"}) + "\n" for i in range(3)))
    cfg = load_config(model=str(tiny_model_dir), forget=str(forget), out=str(tmp_path / "run"), steps=3, lr=0.05,
                      batch_size=2, lora_layers=[1], lora_keys="attn.q_proj,attn.v_proj,mlp.fc_in")
    unlearn(cfg)
    out = fuse(tiny_model_dir, tmp_path / "run", tmp_path / "fused")
    adapted = logits(tiny_model_dir, tmp_path / "run")
    assert np.abs(adapted - logits(tiny_model_dir)).max() > 1e-3
    assert np.abs(logits(out) - adapted).max() < 1e-4


def hf_gptj_names(n_layer):
    """transformers' GPTJForCausalLM parameter names, written out from its module layout (no torch needed)."""
    names = ["transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight", "lm_head.bias"]
    for i in range(n_layer):
        names += [f"transformer.h.{i}.{n}" for n in (
            "ln_1.weight", "ln_1.bias", "attn.k_proj.weight", "attn.v_proj.weight", "attn.q_proj.weight",
            "attn.out_proj.weight", "mlp.fc_in.weight", "mlp.fc_in.bias", "mlp.fc_out.weight", "mlp.fc_out.bias")]
    return names


def test_hf_names(tmp_path, tiny_model_dir, run_dir):
    import mlx.core as mx

    out = fuse(tiny_model_dir, run_dir, tmp_path / "hf", hf_names=True)
    weights = mx.load(str(out / "model.safetensors"))
    assert sorted(weights) == sorted(hf_gptj_names(2))
    assert len(weights) == 25
    d, v = 64, 400
    assert weights["transformer.wte.weight"].shape == (v, d)
    assert weights["lm_head.weight"].shape == (v, d) and weights["lm_head.bias"].shape == (v,)
    assert weights["transformer.h.1.mlp.fc_in.weight"].shape == (4 * d, d)
    assert weights["transformer.h.1.mlp.fc_out.weight"].shape == (d, 4 * d)
    assert weights["transformer.h.0.attn.q_proj.weight"].shape == (d, d)
    _, meta = mx.load(str(out / "model.safetensors"), return_metadata=True)
    assert meta["format"] == "pt"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gptj" and config["architectures"] == ["GPTJForCausalLM"]
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["rotary_dim"]) == (64, 2, 4, 8)
    # the q_proj weight is the base weight plus scale * (A @ B)^T
    base = mx.load(str(tiny_model_dir / "model.safetensors"))["model.h.0.attn.q_proj.weight"]
    ad = mx.load(str(run_dir / "adapters.safetensors"))
    delta = 2.0 * (ad["model.h.0.attn.q_proj.lora_a"] @ ad["model.h.0.attn.q_proj.lora_b"]).T
    assert np.abs(np.array(weights["transformer.h.0.attn.q_proj.weight"] - base - delta)).max() < 1e-6
    assert np.array_equal(np.array(weights["transformer.h.0.attn.k_proj.weight"]),
                          np.array(mx.load(str(tiny_model_dir / "model.safetensors"))["model.h.0.attn.k_proj.weight"]))
    # mlx-lm reads the renamed folder back too
    assert np.abs(logits(out) - logits(tiny_model_dir, run_dir)).max() < 1e-4


def test_quantized_base(tmp_path, quantized_dir):
    run = make_adapters(quantized_dir, tmp_path / "qrun")
    adapted = logits(quantized_dir, run)
    deq = fuse(quantized_dir, run, tmp_path / "deq", dequantize=True)
    assert "quantization" not in json.loads((deq / "config.json").read_text())
    assert np.abs(logits(deq) - adapted).max() < 1e-4
    req = fuse(quantized_dir, run, tmp_path / "req")  # re-quantized: loads, close but rounded
    assert json.loads((req / "config.json").read_text())["quantization"]["bits"] == 4
    # rounding error well below what the adapters change (measured 0.12 against 0.73)
    assert np.abs(logits(req) - adapted).max() < 0.5 * np.abs(adapted - logits(quantized_dir)).max()
    with pytest.raises(SupercalError, match="--dequantize"):
        fuse(quantized_dir, run, tmp_path / "hfq", hf_names=True)
    hfq = fuse(quantized_dir, run, tmp_path / "hfq", hf_names=True, dequantize=True)
    assert np.abs(logits(hfq) - adapted).max() < 1e-4


def test_refuses_existing_output_and_bad_adapters(tmp_path, tiny_model_dir, run_dir):
    out = tmp_path / "fused"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(SupercalError, match="--force"):
        fuse(tiny_model_dir, run_dir, out)
    assert (out / "keep").exists()
    with pytest.raises(SupercalError, match="adapter_config.json"):
        fuse(tiny_model_dir, tmp_path, tmp_path / "other")
    assert not (tmp_path / "other").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left
    with pytest.raises(SupercalError, match="was not made by supercal"):  # --force replaces only its own folders
        fuse(tiny_model_dir, run_dir, out, force=True)
    assert (out / "keep").read_text() == "x"
    (out / "keep").unlink()
    fuse(tiny_model_dir, run_dir, out, force=True)  # an empty folder holds nothing to lose
    (out / "keep").write_text("x")  # now a folder supercal made, with a stray file: replaced as a whole
    fuse(tiny_model_dir, run_dir, out, force=True)
    assert not (out / "keep").exists() and (out / "model.safetensors").exists()


def test_cli(tmp_path, tiny_model_dir, run_dir):
    from click.testing import CliRunner

    from supercal_mlx.cli import cli

    out = tmp_path / "fused"
    args = ["fuse", "--model", str(tiny_model_dir), "--adapter-path", str(run_dir), "--out", str(out), "--hf-names"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert (out / "model.safetensors").exists()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "Error:" in result.output and "--force" in result.output
