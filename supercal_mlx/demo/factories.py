"""Small GPT-J model folders made from scratch, for the demo and the tests.

mlx-lm does not make models: the demo and the tests need small GPT-J models
with their own byte-level BPE tokenizer, written in the same layout ``supercal
convert`` writes (config.json, model.safetensors, tokenizer files), so every
other command treats them exactly like a converted GPT-J.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

# A GPT-J small enough for tests: every dimension exercised (rotary_dim < head_dim).
TINY_GPTJ = dict(n_embd=64, n_head=4, n_layer=2, rotary_dim=8, n_positions=256)


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, *, vocab_size: int = 512) -> Path:
    """Train a GPT-2-style byte-level BPE on ``texts`` and save it as tokenizer files in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": 2048,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def gptj_config(*, vocab_size: int, **overrides) -> dict:
    """A Hugging Face-style GPT-J config.json dict (mlx-lm and transformers both read it)."""
    cfg = dict(
        model_type="gptj",
        architectures=["GPTJForCausalLM"],
        vocab_size=vocab_size,
        n_embd=4096,
        n_head=16,
        n_layer=28,
        rotary_dim=64,
        n_positions=2048,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    cfg.update(overrides)
    return cfg


def create_gptj(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, *, seed: int = 0,
                dtype: str = "float32", init_std: float = 0.02, **config) -> Path:
    """Write a randomly initialised GPT-J folder (mlx-lm layout) using the tokenizer in ``tokenizer_dir``.

    ``config`` overrides :func:`gptj_config` (e.g. ``**TINY_GPTJ``); vocab_size defaults to the tokenizer's.
    """
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import gptj

    tok_dir = Path(tokenizer_dir)
    if "vocab_size" not in config:
        vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
        config["vocab_size"] = len(vocab)
    cfg = gptj_config(**config)
    eos = _eos_id(tok_dir)
    cfg["bos_token_id"] = cfg["eos_token_id"] = eos
    mx.random.seed(seed)
    model = gptj.Model(gptj.ModelArgs.from_dict(cfg))
    params = {}
    for name, p in tree_flatten(model.parameters()):
        if name.endswith("bias") or ".ln_" in name:  # layer norms and biases keep their defaults
            params[name] = p
        else:
            params[name] = init_std * mx.random.normal(p.shape)
    params = {k: v.astype(getattr(mx, dtype)) for k, v in params.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), params, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, out / f.name)
    return out


def _eos_id(tok_dir: Path) -> int:
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    for t in data.get("added_tokens", []):
        if t["content"] == "<|endoftext|>":
            return t["id"]
    return 0
