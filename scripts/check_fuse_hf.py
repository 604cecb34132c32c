"""Check that `supercal fuse --hf-names` writes a folder Hugging Face transformers reads back correctly.

Makes a small random GPT-J (rotary_dim < head size), random LoRA adapters with non-zero B, fuses them
with and without --hf-names, and compares transformers' GPTJForCausalLM logits (torch venv, subprocess)
with mlx-lm's adapter logits. Without --hf-names transformers finds no weights it knows: the control.

    .venv/bin/python scripts/check_fuse_hf.py --torch-python .venv-torch/bin/python
"""

from __future__ import annotations

import argparse
import os
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)
from supercal_mlx.runs.fuse import fuse
from supercal_mlx.demo.factories import create_gptj, train_tokenizer
from supercal_mlx.model import load

TOKENS = [[5, 17, 42, 99, 3, 250, 7, 11, 64, 128, 300, 1, 77, 200, 31, 8]]

TORCH_SIDE = """
import sys, warnings, numpy as np, torch
from transformers import GPTJForCausalLM
from transformers.utils import logging
logging.set_verbosity_error()
model = GPTJForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():
    out = model(torch.tensor(%s)).logits
np.save(sys.argv[2], out.numpy())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-python", default=os.environ.get("SUPERCAL_TORCH_PYTHON", ".venv-torch/bin/python"),
                    help="Python with torch + transformers [default: $SUPERCAL_TORCH_PYTHON, else .venv-torch/bin/python "
                         "from scripts/setup_torch_bench.sh]")
    args = ap.parse_args()

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = train_tokenizer(["a small text for a small tokenizer, with words and more words."] * 50,
                              tmp / "tok", vocab_size=300)
        model_dir = create_gptj(tmp / "model", tok, vocab_size=400, n_embd=128, n_head=4, n_layer=3, rotary_dim=16)
        model, _ = load(model_dir)
        lora = {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": ["attn.q_proj", "attn.v_proj", "mlp.fc_in"]}
        linear_to_lora_layers(model, 3, lora)
        mx.random.seed(3)
        adapters = {k: (0.5 * mx.random.normal(p.shape) if k.endswith("lora_b") else p)
                    for k, p in tree_flatten(model.parameters()) if k.endswith(("lora_a", "lora_b"))}
        run = tmp / "run"
        run.mkdir()
        mx.save_safetensors(str(run / "adapters.safetensors"), adapters)
        (run / "adapter_config.json").write_text(json.dumps(
            {"fine_tune_type": "lora", "num_layers": 3, "lora_parameters": lora}))

        adapted, _ = load(model_dir, run)
        want = np.array(adapted(mx.array(TOKENS)))
        base, _ = load(model_dir)
        base_logits = np.array(base(mx.array(TOKENS)))
        print(f"adapters change the logits by up to {np.abs(want - base_logits).max():.3f}")
        for hf_names in (True, False):
            out = fuse(model_dir, run, tmp / f"fused-{hf_names}", hf_names=hf_names)
            subprocess.run([args.torch_python, "-c", TORCH_SIDE % TOKENS, str(out), str(tmp / "hf.npy")], check=True)
            got = np.load(tmp / "hf.npy")
            print(f"--hf-names={hf_names}: transformers GPTJForCausalLM vs mlx-lm adapter logits: "
                  f"max |diff| {np.abs(got - want).max():.3g}")


if __name__ == "__main__":
    main()
