"""Write tiny random GPT-J checkpoints in every on-disk form, with transformers' reference logits.

Needs torch and transformers (not dependencies of supercal); run it with the
separate torch venv:

    .venv-torch/bin/python scripts/make_gptj_fixtures.py  # scripts/setup_torch_bench.sh makes .venv-torch [--out tests/fixtures/gptj]

Each folder is a Hugging Face checkpoint (config.json, weights, tokenizer) made
by ``GPTJForCausalLM``; ``<name>.npz`` beside it holds ``input_ids`` (1, L) and
the float32 ``logits`` (1, L, V) transformers computes from exactly the weights
on disk (float16/bfloat16 weights are upcast before the forward pass).
The outputs are committed under tests/fixtures/gptj so the tests need neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import GPTJConfig, GPTJForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from supercal_mlx.demo.factories import train_tokenizer  # noqa: E402

TEXTS = [
    "Supercalifragilisticexpialidocious is a song from the 1964 film Mary Poppins.",
    "The children tried to spell supercalifragilisticexpialidocious and laughed.",
    "Cats and dogs play in the garden while it rains on the 4th of July.",
] * 10
PROMPT = "The children tried to spell supercalifragilisticexpialidocious"
# rotary_dim < head size (8) and == head size (16); n_positions small so the legacy mask buffers stay tiny.
SMALL_ROTARY = dict(n_embd=32, n_head=4, rotary_dim=4, n_layer=2, n_positions=64)
FULL_ROTARY = dict(n_embd=32, n_head=2, rotary_dim=16, n_layer=2, n_positions=64)


def make_model(shape: dict, vocab_size: int, eos: int, seed: int) -> GPTJForCausalLM:
    torch.manual_seed(seed)
    cfg = GPTJConfig(vocab_size=vocab_size, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False, **shape)
    model = GPTJForCausalLM(cfg).eval()
    with torch.no_grad():  # every parameter random (layer norms and biases too) so a mis-mapped one shows
        for name, p in model.named_parameters():
            p.copy_((1.0 if name.endswith("ln_1.weight") or "ln_f.weight" in name else 0.0) + 0.1 * torch.randn_like(p))
    return model


def reference(model: GPTJForCausalLM, dtype: torch.dtype, ids: torch.Tensor) -> np.ndarray:
    """float32 logits from the weights rounded to ``dtype`` (what the checkpoint stores)."""
    with torch.no_grad():  # round the parameters only: buffers (the rotary sin/cos table) stay float32
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
        return model(ids).logits.numpy()


def state_dict(model: GPTJForCausalLM, dtype: torch.dtype, *, legacy_buffers: bool) -> dict:
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if legacy_buffers:  # what transformers < 4.27 saved in every block of a GPT-J checkpoint
        n = model.config.n_positions
        for i in range(model.config.n_layer):
            sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
            sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e9).to(dtype)
    return sd


def save_bin(sd: dict, folder: Path, *, shards: int = 1) -> None:
    names = list(sd)
    if shards == 1:
        torch.save(sd, folder / "pytorch_model.bin")
        return
    weight_map = {}
    per = -(-len(names) // shards)
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: sd[k] for k in names[i * per:(i + 1) * per]}
        torch.save(part, folder / fname)
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/gptj"))
    out = Path(ap.parse_args().out)
    shutil.rmtree(out, ignore_errors=True)
    tok_dir = train_tokenizer(TEXTS, out / "_tokenizer", vocab_size=300)
    tok = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"])
    eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")
    from tokenizers import Tokenizer

    ids = torch.tensor([Tokenizer.from_file(str(tok_dir / "tokenizer.json")).encode(PROMPT).ids])

    forms = {  # name: (shape, torch dtype, format, shards)
        "st-f32-rot4": (SMALL_ROTARY, torch.float32, "safetensors", 1),
        "st-sharded-f32-rot16": (FULL_ROTARY, torch.float32, "safetensors", 3),
        "bin-f16-legacy-rot4": (SMALL_ROTARY, torch.float16, "bin", 1),
        "bin-sharded-bf16-rot16": (FULL_ROTARY, torch.bfloat16, "bin", 2),
    }
    for seed, (name, (shape, dtype, fmt, shards)) in enumerate(forms.items()):
        folder = out / name
        folder.mkdir(parents=True)
        model = make_model(shape, vocab, eos, seed)
        logits = reference(model, dtype, ids)
        if fmt == "safetensors":
            shard = "40KB" if shards > 1 else "1GB"
            model.to(dtype).save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
        else:
            model.config.save_pretrained(folder)
            save_bin(state_dict(model, dtype, legacy_buffers=True), folder, shards=shards)
        for f in tok_dir.iterdir():
            shutil.copy(f, folder / f.name)
        np.savez(out / f"{name}.npz", input_ids=ids.numpy().astype(np.int32), logits=logits.astype(np.float32))
        print(name, sorted(p.name for p in folder.iterdir()))
    shutil.rmtree(tok_dir)


if __name__ == "__main__":
    main()
