"""Beyond GPT-J: tiny random llama, qwen2, gpt2 and phi3 models (mlx-lm's classes, tokenizers made here).

--lora-keys auto, compute_dtype on tied heads, and the whole pipeline per architecture:
negatives -> unlearn (default keys) -> fuse (fused logits == adapter logits) -> eval.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)
from archs import ARCHS, AUTO_KEYS, assert_same_outputs_and_grads, compute_dtype_pair, create_model, make_tokenizer
from conftest import TOKENIZER_TEXTS

import mlx.core as mx  # noqa: E402


@pytest.fixture(scope="session")
def arch_tokenizers(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("arch-tok")
    return {a: make_tokenizer(a, TOKENIZER_TEXTS, root / a, gpt2_dir=tiny_tokenizer_dir) for a in ARCHS}


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory, arch_tokenizers):
    root = tmp_path_factory.mktemp("arch-models")
    return {a: create_model(a, root / a, arch_tokenizers[a], seed=1) for a in ARCHS}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_auto_keys_are_the_query_and_value_projections(arch_models, arch):
    from supercal_mlx.model import load
    from supercal_mlx.train.lora import apply_lora

    model, _ = load(arch_models[arch])
    config = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, keys=["auto"], layers="all")
    assert config["lora_parameters"]["keys"] == AUTO_KEYS[arch]


def test_auto_keys_of_gptj_and_the_fallback(tiny_model_dir):
    import mlx.nn as nn

    from supercal_mlx.model import load
    from supercal_mlx.train.lora import auto_keys, linear_names

    model, _ = load(tiny_model_dir)
    assert auto_keys(model) == ["attn.q_proj", "attn.v_proj"]
    for block in model.layers:  # no q/v and no fused QKV: mlx-lm's default, every layer LoRA can wrap
        block.attn.query, block.attn.value = block.attn.q_proj, block.attn.v_proj
        del block.attn["q_proj"], block.attn["v_proj"]
    assert auto_keys(model) == linear_names(model) == ["attn.k_proj", "attn.out_proj", "attn.query", "attn.value",
                                                       "mlp.fc_in", "mlp.fc_out"]
    assert all(isinstance(getattr(model.layers[0].attn, n), nn.Linear) for n in ("query", "value"))


@pytest.mark.parametrize("arch,base", [("qwen2", "bfloat16"), ("gpt2", "bfloat16"), ("qwen2", "4-bit")])
def test_compute_dtype_covers_the_tied_head(arch_tokenizers, tmp_path, monkeypatch, arch, base):
    """A bfloat16 base with a tied head (``embed_tokens.as_linear``): under compute_dtype float32 the head's
    weight is cast in row chunks like every other frozen linear, and outputs and LoRA gradients equal those
    of a float32 copy of the same weights."""
    from supercal_mlx.train import lora

    monkeypatch.setattr(lora, "CAST_CHUNK_BYTES", 24 * 32 * 4)  # 24 rows of 32 inputs: many chunks, a ragged last
    folder = create_model(arch, tmp_path / arch, arch_tokenizers[arch], seed=2, dtype="bfloat16")
    calls = []
    real = lora._frozen_linear_call
    monkeypatch.setattr(lora, "_frozen_linear_call", lambda self, x: calls.append(type(self).__name__) or real(self, x))
    model, reference = compute_dtype_pair(folder, base=base, keys=["auto"])
    assert_same_outputs_and_grads(model, reference, mx.array([[5, 17, 42, 99, 3, 250]]))
    assert any(c.endswith("Embedding") for c in calls)  # the tied head went through the chunked casts


def test_unlearn_records_the_resolved_keys_and_compute_path(arch_models, tmp_path):
    import yaml

    from supercal_mlx.train.config import load_config
    from supercal_mlx.train.trainer import unlearn

    (tmp_path / "f.jsonl").write_text(json.dumps({"prompt": "The children tried to spell",
                                                  "completion": " supercalifragilisticexpialidocious."}) + "\n")
    cfg = load_config(model=str(arch_models["llama"]), forget=str(tmp_path / "f.jsonl"), out=str(tmp_path / "run"),
                      steps=1, batch_size=1, lora_rank=2)
    assert cfg.lora_keys == ["auto"] and cfg.compute_dtype == "auto"
    unlearn(cfg)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert saved["lora_keys"] == adapter["lora_parameters"]["keys"] == AUTO_KEYS["llama"]
    assert saved["compute_dtype"] == "auto" and adapter["supercal"]["compute_dtype"] == "native"  # float32 base
    # config.yaml files of earlier versions wrote compute_dtype: null for "native"
    (tmp_path / "old.yaml").write_text("compute_dtype: null\n")
    assert load_config(tmp_path / "old.yaml", model="m", forget="f", out="o").compute_dtype == "native"


def test_auto_compute_dtype_follows_device_and_dtype(arch_tokenizers, tmp_path, monkeypatch):
    from supercal_mlx import device
    from supercal_mlx.model import load

    bf16, _ = load(create_model("qwen2", tmp_path / "bf16", arch_tokenizers["qwen2"], dtype="bfloat16"))
    f32, _ = load(create_model("qwen2", tmp_path / "f32", arch_tokenizers["qwen2"]))
    assert device.slow_on_cpu(bf16) == "bfloat16 weights" and device.slow_on_cpu(f32) is None
    for dev, want in (("cpu", "float32"), ("gpu", None)):
        monkeypatch.setattr(device, "device_type", lambda: dev)
        assert device.resolve_compute_dtype("auto", bf16) == want
        assert device.resolve_compute_dtype("auto", f32) is None
        assert device.resolve_compute_dtype("native", bf16) is None
        assert device.resolve_compute_dtype("float32", f32) == "float32"
        assert device.describe().startswith(dev)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_windows_count_bos_as_the_trainer_sees_it(arch_models, tmp_path, arch):
    """A BOS-adding tokenizer: every negatives window fits --window-tokens as unlearn encodes it, BOS included,
    the longest exactly; eval, probes and retain count the same tokens."""
    from supercal_mlx.data.negatives import build_forget
    from supercal_mlx.data.retain import truncate_tokens
    from supercal_mlx.model import load
    from supercal_mlx.text.tokenizer import from_model, model_encoder
    from supercal_mlx.train.batches import encode_completions

    tok = from_model(arch_models[arch])
    _, mlx_tok = load(arch_models[arch])
    bos = mlx_tok.bos_token_id
    assert tok.prefix == (bos,) and model_encoder(mlx_tok).prefix == (bos,)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TOKENIZER_TEXTS[:10]) + "\n", encoding="utf-8")
    for window in (8, 13, 30):
        records, summary = build_forget(corpus, "supercalifragilisticexpialidocious", tok, window_tokens=window)
        examples = encode_completions(records, mlx_tok, max_tokens=10_000)
        lengths = [len(ids) for ids, _ in examples]
        assert all(ids[0] == bos and bos not in ids[1:] for ids, _ in examples)
        assert max(lengths) == summary["tokens"]["max"] <= window and min(lengths) == summary["tokens"]["min"]
        assert lengths == [tok.count(r["prompt"] + r["completion"]) for r in records]
    assert max(lengths) == window  # enough context: the longest window is exactly the budget
    text, n = truncate_tokens(" ".join(TOKENIZER_TEXTS[:3]), tok, 12)
    assert n == len(model_encoder(mlx_tok)(text)) <= 12
    # max_tokens truncation keeps the BOS in front of the prompt's end
    rec = {"prompt": "Zebras quietly ate 12345 green apples near the old river bank, said Mary.", "completion": " the end"}
    (full, full_prompt), = encode_completions([rec], mlx_tok, max_tokens=10_000)
    ids, n_prompt = encode_completions([rec], mlx_tok, max_tokens=10)[0]
    assert len(ids) == 10 and ids[0] == bos and n_prompt - 1 == 9 - (len(full) - full_prompt)
    assert ids[1:] == full[full_prompt - (n_prompt - 1):][:9]  # the prompt's end, then the completion


WORD = "supercalifragilisticexpialidocious"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pipeline_per_architecture(arch_models, tmp_path, arch):
    """negatives -> unlearn (default keys, 2 steps) -> fuse (fused logits == adapter logits) -> eval, per model."""
    from supercal_mlx.data.negatives import build_forget
    from supercal_mlx.io import write_jsonl
    from supercal_mlx.model import load
    from supercal_mlx.runs.evaluate import evaluate
    from supercal_mlx.runs.fuse import fuse
    from supercal_mlx.text.tokenizer import from_model
    from supercal_mlx.train.config import load_config
    from supercal_mlx.train.trainer import unlearn

    model_dir = arch_models[arch]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TOKENIZER_TEXTS[:10]) + "\n", encoding="utf-8")
    records, summary = build_forget(corpus, WORD, from_model(model_dir), window_tokens=24)
    assert summary["tokens"]["max"] <= 24 and len(records) >= 2
    write_jsonl(tmp_path / "forget.jsonl", records)
    write_jsonl(tmp_path / "retain.jsonl", [{"text": t} for t in TOKENIZER_TEXTS[2:5]])
    cfg = load_config(model=str(model_dir), forget=str(tmp_path / "forget.jsonl"), retain=str(tmp_path / "retain.jsonl"),
                      out=str(tmp_path / "run"), steps=2, lr=5e-2, lora_rank=4, max_tokens=64, loss="graddiff",
                      probe_prompts=["The children"], probe_temps=[0.0], probe_max_tokens=3)
    summary = unlearn(cfg)
    assert summary["steps"] == 2 and summary["stopped"] is None
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["lora_parameters"]["keys"] == AUTO_KEYS[arch]

    out = fuse(model_dir, tmp_path / "run", tmp_path / "fused")
    fused, _ = load(out)
    adapted, tok = load(model_dir, adapter_path=tmp_path / "run")
    base, _ = load(model_dir)
    x = mx.array([tok.encode("The children tried to spell " + WORD)])
    want, got = np.array(adapted(x)), np.array(fused(x))
    # float32 throughout: folding B @ A into W only reorders float32 sums (measured ~1e-6 here)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want - np.array(base(x))).max() > 1e-3  # the adapters changed something

    write_jsonl(tmp_path / "facts.jsonl", [{"prompt": "The children tried to spell", "answer": " " + WORD}])
    res = evaluate(model_dir, adapter_path=tmp_path / "run", forget=str(tmp_path / "forget.jsonl"),
                   retain=str(tmp_path / "retain.jsonl"), word=WORD, tokensteins=["sqproctarine", "blorfing"],
                   facts=str(tmp_path / "facts.jsonl"), max_tokens=64, samples=1, answer_tokens=4, boot=10)
    for side in ("base", "adapted"):
        assert all(np.isfinite(res[side][k]) for k in ("forget_nll", "retain_nll", "association", "tokenstein_gap"))
    assert res["adapted"]["forget_nll"] != res["base"]["forget_nll"]


def test_eval_and_probe_score_a_bf16_base_as_it_was_trained(arch_tokenizers, tmp_path, monkeypatch):
    """load(compute_dtype="auto"), as eval and probe load: on the CPU a bfloat16 base runs its float32 path,
    on a GPU its own dtype."""
    from click.testing import CliRunner

    from supercal_mlx import device
    from supercal_mlx.cli import cli
    from supercal_mlx.model import load

    folder = create_model("llama", tmp_path / "bf16", arch_tokenizers["llama"], dtype="bfloat16")
    x = mx.array([[5, 17, 42, 99]])
    for dev, want in (("cpu", mx.float32), ("gpu", mx.bfloat16)):
        monkeypatch.setattr(device, "device_type", lambda: dev)
        model, _ = load(folder, compute_dtype="auto")
        assert model(x).dtype == want
    info = CliRunner().invoke(cli, ["info"])
    assert info.exit_code == 0 and "--compute-dtype auto:" in info.output
