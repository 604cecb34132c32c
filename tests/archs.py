"""Tiny random models of other architectures, built in the tests from mlx-lm's own classes (no downloads).

Each comes with a tokenizer of its family, trained here with the ``tokenizers`` library:

* ``llama``: Llama-3-style byte-level BPE (a Split with Llama 3's pattern, then ByteLevel(use_regex=false)),
  a BOS token added in front of every encoding (``<|begin_of_text|>``), tied embeddings;
* ``qwen2``: Qwen2-style byte-level BPE (NFC normalizer, Split with Qwen2's pattern), no BOS, tied embeddings;
* ``gpt2``: GPT-2-style byte-level BPE (the tiny tokenizer of conftest.py), tied embeddings (wte.as_linear);
* ``phi3``: SentencePiece/Llama-2-style BPE (Prepend + Replace to "▁", no pre-tokenizer) with ``<s>`` as BOS.
"""

from __future__ import annotations

import json
from pathlib import Path

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

ARCHS = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0),
    "qwen2": dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0),
    "gpt2": dict(model_type="gpt2", n_ctx=256, n_embd=32, n_head=4, n_layer=2, n_positions=256,
                 layer_norm_epsilon=1e-5),
    "phi3": dict(model_type="phi3", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=4, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0,
                 max_position_embeddings=256),
}
# What --lora-keys auto picks for each (the attention query/value projections, else the fused QKV layer)
AUTO_KEYS = {
    "llama": ["self_attn.q_proj", "self_attn.v_proj"],
    "qwen2": ["self_attn.q_proj", "self_attn.v_proj"],
    "gpt2": ["attn.c_attn"],
    "phi3": ["self_attn.qkv_proj"],
}


def _trainer(vocab_size: int, special: list[str], **kw):
    from tokenizers import pre_tokenizers, trainers

    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                               initial_alphabet=kw.pop("alphabet", pre_tokenizers.ByteLevel.alphabet()), **kw)


def byte_level_split_tokenizer(texts, out: Path, *, pattern: str, nfc: bool, bos: str | None, eos: str,
                               vocab_size: int = 400) -> Path:
    """A Llama-3 / Qwen2-style tokenizer folder: [NFC], Split(pattern, isolated), ByteLevel(use_regex=false)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(ignore_merges=True))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = [s for s in (bos, eos) if s]
    tok.train_from_iterator(texts, trainer=_trainer(vocab_size, special))
    if bos:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return _save(tok, out, bos=bos, eos=eos)


def sentencepiece_tokenizer(texts, out: Path, *, vocab_size: int = 400) -> Path:
    """A Llama-2 / Phi-3-style tokenizer folder: Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, BOS <s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    from tokenizers import pre_tokenizers

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    # trained split at spaces, as SentencePiece trains (no piece holds a space inside), then saved as Llama 2's
    # tokenizer.json is: no pre-tokenizer, spaces made "▁" by the normalizer
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    alphabet = sorted(set("".join(texts).replace(" ", "▁")) | set("▁\n" + "".join(map(chr, range(33, 127)))))
    tok.train_from_iterator(texts, trainer=_trainer(vocab_size, ["<unk>", "<s>", "</s>"], alphabet=alphabet))
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return _save(tok, out, bos="<s>", eos="</s>", unk="<unk>")


def _save(tok, out: Path, *, bos, eos, unk=None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "model_max_length": 2048, "add_bos_token": bos is not None}
    if unk:
        config["unk_token"] = unk
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def make_tokenizer(arch: str, texts, out: Path, gpt2_dir: Path | None = None) -> Path:
    if arch == "llama":
        return byte_level_split_tokenizer(texts, out, pattern=LLAMA3_PATTERN, nfc=False, bos="<|begin_of_text|>",
                                          eos="<|end_of_text|>")
    if arch == "qwen2":
        return byte_level_split_tokenizer(texts, out, pattern=QWEN2_PATTERN, nfc=True, bos=None, eos="<|endoftext|>")
    if arch == "phi3":
        return sentencepiece_tokenizer(texts, out)
    import shutil

    return Path(shutil.copytree(gpt2_dir, out))


def create_model(arch: str, out: Path, tokenizer_dir: Path, *, seed: int = 0, dtype: str = "float32",
                 **overrides) -> Path:
    """A random ``arch`` model folder from mlx-lm's class (config.json, model.safetensors, the tokenizer files)."""
    import importlib
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    n_vocab = 1 + max([*vocab["model"]["vocab"].values(), *(t["id"] for t in vocab["added_tokens"])])
    cfg = dict(ARCHS[arch], vocab_size=n_vocab, **overrides)
    tok_cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    for key in ("bos", "eos"):
        name = tok_cfg.get(f"{key}_token")
        ids = [t["id"] for t in vocab["added_tokens"] if t["content"] == name]
        if ids:
            cfg[f"{key}_token_id"] = ids[0]
    cfg["pad_token_id"] = cfg.get("eos_token_id")  # transformers' config check (phi3 defaults to 32000)
    module = importlib.import_module(f"mlx_lm.models.{arch}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(cfg))
    params = {k: (0.05 * mx.random.normal(v.shape) if v.ndim == 2 else v).astype(getattr(mx, dtype))
              for k, v in tree_flatten(model.parameters())}
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), params, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


# ------------------------------------------------------------ Hugging Face-style checkpoints, written without torch

_STORAGES = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage"}


def write_torch_bin(path: Path, tensors: dict) -> None:
    """A PyTorch zip checkpoint (``torch.save(state_dict)`` layout: archive/data.pkl + one storage per tensor)
    of numpy arrays (bfloat16 as ("bfloat16", uint16 bits)), pickled as torch pickles it, without torch: a
    stand-in ``torch`` module is importable only while pickling."""
    import collections
    import io
    import pickle
    import sys
    import types
    import zipfile

    import numpy as np

    fake = types.ModuleType("torch")
    fake._utils = types.ModuleType("torch._utils")
    fake._utils.__name__ = "torch._utils"

    def _rebuild_tensor_v2(*args):  # never called: only pickled by name
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    fake._utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _STORAGES.values():
        setattr(fake, name, type(name, (), {"__module__": "torch"}))

    class Storage:
        def __init__(self, key, dtype, numel):
            self.key, self.dtype, self.numel = key, dtype, numel

    class Tensor:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            strides, acc = [], 1
            for n in reversed(self.shape):
                strides.append(acc)
                acc *= n
            return _rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(reversed(strides)), False,
                                        collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", getattr(fake, _STORAGES[obj.dtype]), obj.key, "cpu", obj.numel)
            return None

    state, blobs = collections.OrderedDict(), {}
    for i, (name, value) in enumerate(tensors.items()):
        dtype, arr = value if isinstance(value, tuple) else (str(value.dtype), value)
        arr = np.ascontiguousarray(arr)
        blobs[str(i)] = arr.tobytes()
        state[name] = Tensor(Storage(str(i), dtype, arr.size), arr.shape)
    buf = io.BytesIO()
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = fake, fake._utils
    try:
        Pickler(buf, protocol=2).dump(state)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for key, data in blobs.items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")


def hf_checkpoint(model_dir: Path, out: Path, *, fmt: str = "safetensors", dtype: str = "float32",
                  transformers5: bool = False) -> Path:
    """The model in ``model_dir`` saved as a Hugging Face checkpoint would be (no mlx metadata; GPT-2 in the hub's
    layout: names without ``model.``, Conv1D weights transposed, the causal-mask buffer ``attn.bias``)."""
    import shutil

    import mlx.core as mx
    import numpy as np

    cfg = json.loads((model_dir / "config.json").read_text())
    weights = mx.load(str(model_dir / "model.safetensors"))
    if cfg["model_type"] == "gpt2":
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        weights = {k.removeprefix("model."): (v.T if k.endswith(conv1d) else v) for k, v in weights.items()}
        for i in range(cfg["n_layer"]):
            weights[f"h.{i}.attn.bias"] = mx.tril(mx.ones((1, 1, 8, 8)))
    else:  # and a buffer older transformers versions saved, which mlx-lm's sanitize drops
        weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = mx.arange(4, dtype=mx.float32)
    out.mkdir(parents=True)
    weights = {k: v.astype(getattr(mx, dtype)) for k, v in weights.items()}
    if fmt == "safetensors":
        mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    else:
        arrays = {k: ("bfloat16", np.array(v.view(mx.uint16))) if dtype == "bfloat16" else np.array(v)
                  for k, v in weights.items()}
        write_torch_bin(out / "pytorch_model.bin", arrays)
    if transformers5 and "rope_theta" in cfg:  # transformers 5 writes rope_parameters instead of rope_theta
        cfg["rope_parameters"] = {"rope_theta": cfg.pop("rope_theta"), "rope_type": "default"}
    (out / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype}, indent=2))
    for f in model_dir.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, out / f.name)
    return out


# ------------------------------------------------------------ compute_dtype against a float32 copy

def compute_dtype_pair(folder: Path, *, base: str, keys: list[str], ckpt: bool = False):
    """(model, reference) from one folder of bfloat16 weights: ``model`` keeps them stored as they are (4-bit
    quantized when ``base == "4-bit"``) and computes in float32 (set_compute_dtype); ``reference`` is a float32
    copy of the same (rounded / dequantized) values. Both get the same LoRA layers on ``keys``, with non-zero B
    so that A gets a gradient too; ``ckpt`` adds gradient checkpointing to ``model``."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import dequantize_model

    from supercal_mlx.model import load
    from supercal_mlx.train import lora

    def build(compute: bool):
        model, _ = load(folder)
        if base == "4-bit":
            nn.quantize(model, group_size=32, bits=4)
            if not compute:
                model = dequantize_model(model)
        if compute:
            lora.set_compute_dtype(model, "float32")
        else:
            model.set_dtype(mx.float32)
        mx.random.seed(3)
        lora.apply_lora(model, rank=4, alpha=8.0, dropout=0.0, keys=keys, layers="all")
        for m in lora.lora_modules(model):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.1
        if compute and ckpt:
            lora.enable_grad_checkpoint(model)
        return model

    return build(True), build(False)


def assert_same_outputs_and_grads(model, reference, x) -> dict:
    """Outputs (float32, within 2e-5) and LoRA gradients of a weighted sum of them (within 1e-5 of each
    gradient's scale) agree; returns the gradients."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten

    out = model(x)
    assert out.dtype == mx.float32
    np.testing.assert_allclose(np.array(out), np.array(reference(x)), atol=2e-5)
    w = mx.random.normal(out.shape, key=mx.random.key(1))
    g = dict(tree_flatten(nn.value_and_grad(model, lambda: (model(x) * w).sum())()[1]))
    g_ref = dict(tree_flatten(nn.value_and_grad(reference, lambda: (reference(x) * w).sum())()[1]))
    assert sorted(g) == sorted(g_ref) and g
    for n in g:
        scale = float(mx.abs(g_ref[n]).max())
        assert scale > 0
        np.testing.assert_allclose(np.array(g[n]), np.array(g_ref[n]), atol=1e-5 * scale, err_msg=n)
    return g
