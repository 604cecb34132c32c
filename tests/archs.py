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


def create_model(arch: str, out: Path, tokenizer_dir: Path, *, seed: int = 0, dtype: str = "float32") -> Path:
    """A random ``arch`` model folder from mlx-lm's class (config.json, model.safetensors, the tokenizer files)."""
    import importlib
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    n_vocab = 1 + max([*vocab["model"]["vocab"].values(), *(t["id"] for t in vocab["added_tokens"])])
    cfg = dict(ARCHS[arch], vocab_size=n_vocab)
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
        shutil.copy(f, out / f.name)
    return out
