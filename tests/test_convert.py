"""supercal convert: logits against transformers' reference, mlx-lm loading, and every kind of bad input.

The checkpoints under tests/fixtures/gptj were written by transformers' GPTJForCausalLM
(scripts/make_gptj_fixtures.py); the tests need neither torch nor transformers' model code.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.convert import convert
from supercal_mlx.errors import SupercalError

FIXTURES = Path(__file__).parent / "fixtures" / "gptj"
FORMS = ["st-f32-rot4", "st-sharded-f32-rot16", "bin-f16-legacy-rot4", "bin-sharded-bf16-rot16"]


def logits(model_dir: Path, input_ids: np.ndarray) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(model_dir))  # plain mlx-lm, nothing of ours
    return np.array(model(mx.array(input_ids)).astype(mx.float32))


def header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture converted once to float32."""
    root = tmp_path_factory.mktemp("converted")
    return {name: convert(str(FIXTURES / name), root / name, dtype="float32") for name in FORMS}


@pytest.mark.parametrize("name", FORMS)
def test_logits_match_transformers(converted, name):
    ref = np.load(FIXTURES / f"{name}.npz")
    got = logits(converted[name], ref["input_ids"])
    assert got.shape == ref["logits"].shape == (1, 23, 300)
    # float32 on both sides, any device: measured ~3e-7 on the CPU; a GPU sums in another order (~1e-6), and
    # TF32 matmuls (CUDA, M5 Macs: ~1e-3) are switched off for the tests in conftest.py
    assert np.abs(got - ref["logits"]).max() < 1e-4


def test_output_layout(converted):
    out = converted["bin-f16-legacy-rot4"]
    names = sorted(p.name for p in out.iterdir())
    assert names == [".supercal-run.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    h = header(out / "model.safetensors")
    assert h.pop("__metadata__") == {"format": "mlx"}
    # 2 layers x 10 tensors + wte + ln_f (2) + lm_head (2); the legacy mask buffers are gone
    assert len(h) == 25 and not any(k.endswith(("attn.bias", "masked_bias")) for k in h)
    assert h["model.wte.weight"]["shape"] == [300, 32] and h["model.h.1.mlp.fc_in.weight"]["shape"] == [128, 32]
    assert {v["dtype"] for v in h.values()} == {"F32"}
    assert json.loads((out / "config.json").read_text())["rotary_dim"] == 4
    assert (out.stat().st_mode & 0o077) != 0  # not left private like a temp folder


def test_generate_with_plain_mlx_lm(converted):
    """mlx-lm's own greedy decoding, from every prefix of the fixture's ids, picks the token that transformers'
    logits rank first (the fixture's top-2 margins are at least 1.9e-3, far above the 1e-4 logit error)."""
    from mlx_lm import load, stream_generate

    ref = np.load(FIXTURES / "st-f32-rot4.npz")
    ids = ref["input_ids"][0].tolist()
    model, tok = load(str(converted["st-f32-rot4"]))
    got = [[r.token for r in stream_generate(model, tok, ids[:k], max_tokens=1)][-1] for k in range(1, len(ids) + 1)]
    assert got == ref["logits"][0].argmax(-1).tolist()


def test_sharded_output_equals_single(tmp_path, converted):
    out = convert(str(FIXTURES / "st-f32-rot4"), tmp_path / "sharded", dtype="float32", max_shard_bytes=20_000)
    shards = sorted(out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) > 3 and set(index["weight_map"].values()) == {p.name for p in shards}
    sizes = [v["data_offsets"][1] - v["data_offsets"][0] for p in shards for k, v in header(p).items() if k != "__metadata__"]
    assert index["metadata"]["total_size"] == sum(sizes) == 4 * 44_588  # float32 parameters of the tiny GPT-J
    ids = np.load(FIXTURES / "st-f32-rot4.npz")["input_ids"]
    assert np.array_equal(logits(out, ids), logits(converted["st-f32-rot4"], ids))


@pytest.mark.parametrize("dtype,code,tol", [("float16", "F16", 0.02), ("bfloat16", "BF16", 0.1)])
def test_half_dtypes(tmp_path, dtype, code, tol):
    out = convert(str(FIXTURES / "st-f32-rot4"), tmp_path / dtype, dtype=dtype)
    h = header(out / "model.safetensors")
    h.pop("__metadata__")
    assert {v["dtype"] for v in h.values()} == {code}
    ref = np.load(FIXTURES / "st-f32-rot4.npz")
    # the weights' own rounding (float16 11 bits, bfloat16 8 bits) bounds the error on any device
    assert np.abs(logits(out, ref["input_ids"]) - ref["logits"]).max() < tol


@pytest.mark.parametrize("bits,tol", [(4, 0.5), (8, 0.035)])
def test_quantized_loads_and_runs(tmp_path, converted, bits, tol):
    """The stored weights are exactly mx.quantize of the float ones, so the logit error is the rounding alone:
    deterministic for this fixture (4-bit 0.453, 8-bit 0.030 on logits up to 2.07, about the ratio of the
    two quantization steps, (2^8 - 1) / (2^4 - 1) = 17); the bounds leave ~10% for other devices' arithmetic."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm import load

    out = convert(str(FIXTURES / "bin-f16-legacy-rot4"), tmp_path / "q", dtype="float32", quantize=True,
                  q_bits=bits, q_group_size=32)
    assert json.loads((out / "config.json").read_text())["quantization"] == {"group_size": 32, "bits": bits, "mode": "affine"}
    h = header(out / "model.safetensors")
    assert h["model.h.0.attn.q_proj.weight"] == {**h["model.h.0.attn.q_proj.weight"], "dtype": "U32", "shape": [32, bits]}
    assert h["model.h.0.attn.q_proj.scales"]["shape"] == [32, 1] and "model.h.0.ln_1.scales" not in h
    model, _ = load(str(out))
    assert isinstance(model.lm_head, nn.QuantizedLinear) and isinstance(model.model.wte, nn.QuantizedEmbedding)
    floats = dict(tree_flatten(load(str(converted["bin-f16-legacy-rot4"]))[0].parameters()))
    stored = dict(tree_flatten(model.parameters()))
    quantized = [k[: -len(".scales")] for k in stored if k.endswith(".scales")]
    assert len(quantized) == 14  # 2 x (q, k, v, out, fc_in, fc_out) + wte + lm_head
    for name in quantized:
        want = mx.quantize(floats[name + ".weight"], group_size=32, bits=bits)
        got = (stored[name + ".weight"], stored[name + ".scales"], stored[name + ".biases"])
        assert all(mx.array_equal(a, b).item() for a, b in zip(got, want)), name
    ids = np.load(FIXTURES / "bin-f16-legacy-rot4.npz")["input_ids"]
    err = np.abs(logits(out, ids) - logits(converted["bin-f16-legacy-rot4"], ids)).max()
    assert 0 < err < tol


def test_quantize_skips_narrow_weights(tmp_path):
    import mlx.nn as nn
    from mlx_lm import load

    # group size 64: only fc_out (width 128) divides; the width-32 weights stay float, as mlx_lm.convert does
    out = convert(str(FIXTURES / "st-f32-rot4"), tmp_path / "q", quantize=True, q_group_size=64)
    h = header(out / "model.safetensors")
    assert sorted(k for k in h if k.endswith(".scales")) == ["model.h.0.mlp.fc_out.scales", "model.h.1.mlp.fc_out.scales"]
    model, _ = load(str(out))
    assert isinstance(model.model.h[0].mlp.fc_out, nn.QuantizedLinear) and type(model.model.h[0].mlp.fc_in) is nn.Linear
    ref = np.load(FIXTURES / "st-f32-rot4.npz")
    err = np.abs(logits(out, ref["input_ids"]) - ref["logits"]).max()
    # only the two fc_out weights are rounded to 4 bits (0.227 measured; float16 alone gives 0.003): far below
    # the 0.453 of quantizing every layer (test_quantized_loads_and_runs), far above float16's rounding
    assert 0.1 < err < 0.25


def test_cli_convert_and_force(tmp_path):
    runner = CliRunner()
    args = ["convert", str(FIXTURES / "st-f32-rot4"), "--out", str(tmp_path / "m"), "--dtype", "float32"]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "Wrote" in r.output and (tmp_path / "m" / "model.safetensors").exists()
    r = runner.invoke(cli, args)
    assert r.exit_code == 1 and "already exists" in r.output and "--force" in r.output and "Traceback" not in r.output
    (tmp_path / "m" / "marker").write_text("old")
    r = runner.invoke(cli, args + ["--force"])
    assert r.exit_code == 0 and not (tmp_path / "m" / "marker").exists()
    assert leftovers(tmp_path) == []


def test_deflated_bin_members(tmp_path, converted):
    # torch writes stored (uncompressed) members; a re-zipped checkpoint may deflate them
    src = copy_fixture("bin-f16-legacy-rot4", tmp_path)
    with zipfile.ZipFile(FIXTURES / "bin-f16-legacy-rot4" / "pytorch_model.bin") as zin, \
            zipfile.ZipFile(src / "pytorch_model.bin", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    out = convert(str(src), tmp_path / "out", dtype="float32")
    ids = np.load(FIXTURES / "bin-f16-legacy-rot4.npz")["input_ids"]
    assert np.array_equal(logits(out, ids), logits(converted["bin-f16-legacy-rot4"], ids))


def test_strided_tensor_read(tmp_path):
    from supercal_mlx.convert.readers import TensorInfo

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "raw").write_bytes(b"pad!" + a.tobytes())
    t = TensorInfo("t", "float32", (4, 3), tmp_path / "raw", 4, strides=(1, 4))  # a transposed view of a
    assert np.array_equal(t.read_rows(), a.T) and np.array_equal(t.read_rows(1, 3), a.T[1:3])


# ---------------------------------------------------------------- hostile and broken input

class _Shell:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _evil_bin(folder: Path, payload: bytes) -> None:
    (folder / "pytorch_model.bin").unlink()
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("global_", ["shell", "builtins.eval", "torch.storage._load_from_bytes"])
def test_hostile_pickle_refused_without_running(tmp_path, global_):
    src = copy_fixture("bin-f16-legacy-rot4", tmp_path)
    marker = tmp_path / "MARKER"
    if global_ == "shell":
        payload = pickle.dumps({"transformer.wte.weight": _Shell(f"touch {marker}")}, protocol=2)
        expect = f"{os.system.__module__}.system"
    else:
        module, name = global_.rsplit(".", 1)
        payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x05\x00\x00\x00hello\x85R."
        expect = global_
    _evil_bin(src, payload)
    r = CliRunner().invoke(cli, ["convert", str(src), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"contains global {expect}" in r.output and "nothing in it was run" in r.output
    assert not marker.exists() and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_legacy_pickle_format_refused(tmp_path):
    src = copy_fixture("bin-f16-legacy-rot4", tmp_path)
    (src / "pytorch_model.bin").write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")
    with pytest.raises(SupercalError, match="legacy"):
        convert(str(src), tmp_path / "out")


@pytest.mark.parametrize("name,weights", [("st-f32-rot4", "model.safetensors"),
                                           ("bin-f16-legacy-rot4", "pytorch_model.bin"),
                                           ("st-sharded-f32-rot16", "model-00003-of-00005.safetensors")])
def test_truncated_file_clean_error(tmp_path, name, weights):
    src = copy_fixture(name, tmp_path)
    path = src / weights
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    r = CliRunner().invoke(cli, ["convert", str(src), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert weights in r.output and ("truncated" in r.output or "corrupt" in r.output)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_corrupt_headers(tmp_path):
    src = copy_fixture("st-f32-rot4", tmp_path)
    (src / "model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json at all...}" + b"\0" * 64)
    with pytest.raises(SupercalError, match="corrupt safetensors header"):
        convert(str(src), tmp_path / "out")
    src = copy_fixture("bin-f16-legacy-rot4", tmp_path)
    _evil_bin(src, b"\x80\x02}q\x00(X\x01")  # a pickle cut short
    with pytest.raises(SupercalError, match="corrupt data.pkl"):
        convert(str(src), tmp_path / "out2")


def test_missing_pieces(tmp_path):
    src = copy_fixture("st-f32-rot4", tmp_path)
    (src / "tokenizer.json").unlink()
    with pytest.raises(SupercalError, match="no tokenizer"):
        convert(str(src), tmp_path / "out")
    (src / "model.safetensors").unlink()
    with pytest.raises(SupercalError, match="no model weights"):
        convert(str(src), tmp_path / "out")
    (src / "config.json").unlink()
    with pytest.raises(SupercalError, match="no config.json"):
        convert(str(src), tmp_path / "out")
    with pytest.raises(SupercalError, match="neither a folder nor a hub id"):
        convert(str(tmp_path / "nope"), tmp_path / "out")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name,model_type,hint", [
    ("st-f32-rot4", "not_a_model", "mlx-lm does not know model_type 'not_a_model'"),
    ("bin-f16-legacy-rot4", "llama", r"lacks 20 tensor\(s\) the llama model needs, e.g. model.embed_tokens.weight"),
])
def test_other_architecture(tmp_path, name, model_type, hint):
    src = copy_fixture(name, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": model_type, "hidden_size": 32,
                                                 "num_hidden_layers": 2, "intermediate_size": 64,
                                                 "num_attention_heads": 4, "rms_norm_eps": 1e-5}))
    with pytest.raises(SupercalError, match=hint):
        convert(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _resave(src: Path, edit) -> None:
    import mlx.core as mx

    weights = mx.load(str(src / "model.safetensors"))
    edit(weights)
    mx.save_safetensors(str(src / "model.safetensors"), weights)


@pytest.mark.parametrize("edit,message", [
    (lambda w: w.pop("transformer.h.1.mlp.fc_out.bias"), "lacks 1 tensor.*transformer.h.1.mlp.fc_out.bias"),
    (lambda w: w.update({"transformer.h.2.ln_1.weight": w["transformer.ln_f.weight"]}), "transformer.h.2.ln_1.weight"),
    (lambda w: w.update({"lm_head.bias": w["lm_head.bias"][:-1]}), r"lm_head.bias has shape \[299\].*\[300\]"),
])
def test_tensor_mismatch_named(tmp_path, edit, message):
    src = copy_fixture("st-f32-rot4", tmp_path)
    _resave(src, edit)
    with pytest.raises(SupercalError, match=message):
        convert(str(src), tmp_path / "out")


def test_tied_embeddings_reuse_wte(tmp_path):
    # transformers omits lm_head.weight from a tied checkpoint; the output must carry wte in its place
    src = copy_fixture("st-f32-rot4", tmp_path)
    _resave(src, lambda w: w.update({"lm_head.weight": w["transformer.wte.weight"]}))
    untied = convert(str(src), tmp_path / "untied", dtype="float32")
    _resave(src, lambda w: w.pop("lm_head.weight"))
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    tied = convert(str(src), tmp_path / "tied", dtype="float32")
    ids = np.load(FIXTURES / "st-f32-rot4.npz")["input_ids"]
    assert np.array_equal(logits(tied, ids), logits(untied, ids))


def test_failure_midway_leaves_nothing(tmp_path):
    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(str(FIXTURES / "bin-sharded-bf16-rot16"), tmp_path / "out", progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_full_disk(tmp_path, monkeypatch):
    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(SupercalError, match="No space left on device"):
        convert(str(FIXTURES / "st-f32-rot4"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_hub_id_from_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-gptj"
    shutil.copytree(FIXTURES / "bin-f16-legacy-rot4", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network here: the cached snapshot must do
    out = convert("someone/tiny-gptj", tmp_path / "out", dtype="float32")
    ref = np.load(FIXTURES / "bin-f16-legacy-rot4.npz")
    assert np.abs(logits(out, ref["input_ids"]) - ref["logits"]).max() < 1e-4
    with pytest.raises(SupercalError, match="cannot download someone/other"):
        convert("someone/other", tmp_path / "out2")
    with pytest.raises(SupercalError, match="--revision applies to hub ids only"):
        convert(str(FIXTURES / "st-f32-rot4"), tmp_path / "out3", revision="float16")
