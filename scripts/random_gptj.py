"""Write a random GPT-J model folder tensor by tensor, for benchmarks at real sizes (no download).

``supercal_mlx.demo.factories.create_gptj`` builds the whole model in float32 before saving, which is fine for
test models but would need ~24 GB for GPT-J-6B. This writer draws one tensor at a time (float32, then
cast or 4-bit quantized) and flushes a safetensors shard every ~2 GB, so memory stays near one shard.
Weights are stored under Hugging Face names (``transformer.h.N...``): transformers' GPTJForCausalLM
reads the folder as it is, and mlx-lm's GPT-J ``sanitize`` maps the names back to its own.

    .venv/bin/python scripts/random_gptj.py /tmp/gptj6b --dtype bfloat16 --n-layer 28
    .venv/bin/python scripts/random_gptj.py /tmp/gptj6b-q4 --dtype bfloat16 --q-bits 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)
from supercal_mlx.runs.fuse import hf_gptj_shapes
from supercal_mlx.demo.factories import _eos_id, gptj_config, train_tokenizer

SHARD_BYTES = 2 << 30
TOKENIZER_TEXT = ("The quick brown fox jumps over the lazy dog while Mary Poppins sings supercalifragilistic songs "
                  "about words, numbers 0123456789 and punctuation: commas, dots; quotes \"like\" 'these'.")


def write_random_gptj(out: str | Path, *, dtype: str = "float32", q_bits: int | None = None, q_group_size: int = 64,
                      seed: int = 0, init_std: float = 0.02, **config) -> Path:
    import mlx.core as mx

    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    train_tokenizer([TOKENIZER_TEXT] * 20, out, vocab_size=512)
    cfg = gptj_config(vocab_size=config.pop("vocab_size", 50400), **config)
    cfg["bos_token_id"] = cfg["eos_token_id"] = _eos_id(out)
    cfg["torch_dtype"] = dtype
    if q_bits:
        cfg["quantization"] = cfg["quantization_config"] = {"group_size": q_group_size, "bits": q_bits}
    import numpy as np

    rng = np.random.default_rng(seed)  # numpy's generator: ~2.5x faster than mx.random.normal on this CPU
    target = getattr(mx, dtype)
    shard: dict = {}
    files: list[tuple[str, list[str]]] = []

    def flush():
        name = f"part-{len(files) + 1:05d}.safetensors"
        mx.save_safetensors(str(out / name), shard, metadata={"format": "pt" if not q_bits else "mlx"})
        files.append((name, list(shard)))
        shard.clear()

    for name, shape in hf_gptj_shapes(cfg).items():
        if name.endswith("bias"):
            w = mx.zeros(shape, dtype=target)
        elif ".ln_" in name:
            w = mx.ones(shape, dtype=target)
        else:
            w = mx.array(rng.standard_normal(shape, dtype=np.float32) * init_std).astype(target)  # (out, in)
        if q_bits and len(shape) == 2 and shape[-1] % q_group_size == 0:
            # every linear layer, the embedding and lm_head: what mlx-lm's quantize_model does for GPT-J
            q, scales, biases = mx.quantize(w, group_size=q_group_size, bits=q_bits)
            base = name[: -len(".weight")]
            tensors = {name: q, base + ".scales": scales, base + ".biases": biases}
        else:
            tensors = {name: w}
        mx.eval(tensors)
        shard.update(tensors)
        if sum(t.nbytes for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    # final names model-0000i-of-0000n + index: the layout transformers and mlx-lm both read
    weight_map, total = {}, 0
    for i, (name, keys) in enumerate(files, 1):
        final = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        (out / name).rename(out / final)
        weight_map.update(dict.fromkeys(keys, final))
    total = sum(p.stat().st_size for p in out.glob("model-*.safetensors"))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--q-bits", type=int, default=None)
    ap.add_argument("--n-layer", type=int, default=28)
    ap.add_argument("--n-embd", type=int, default=4096)
    ap.add_argument("--n-head", type=int, default=16)
    ap.add_argument("--rotary-dim", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=50400)
    a = ap.parse_args()
    t0 = time.time()
    path = write_random_gptj(a.out, dtype=a.dtype, q_bits=a.q_bits, n_layer=a.n_layer, n_embd=a.n_embd,
                             n_head=a.n_head, rotary_dim=a.rotary_dim, vocab_size=a.vocab_size)
    size = sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e9
    print(f"wrote {path} ({size:.2f} GB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
