"""Check `supercal convert` against transformers on Llama (and Qwen2) checkpoints that transformers itself wrote.

In a Python with torch and transformers (``--torch-python``, a separate venv: supercal does not depend on
torch), a small random ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` is saved with ``save_pretrained`` as
safetensors and as a PyTorch ``.bin`` (``safe_serialization=False``), tied and untied, with a non-default
``rope_theta``, and its float32 logits are saved. Each folder is converted with ``supercal convert`` here
(no torch) and mlx-lm's logits are compared with transformers'.

    .venv/bin/python scripts/check_convert_hf.py --torch-python /path/to/torch-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)
from supercal_mlx.convert import convert

TOKENS = [[5, 17, 42, 99, 3, 250, 7, 11, 64, 128, 300, 1, 77, 200, 31, 8, 9, 10, 400, 2]]

TORCH_SIDE = """
import json, sys, numpy as np, torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers.utils import logging
logging.set_verbosity_error()
root, kind, tied, fmt = sys.argv[1], sys.argv[2], sys.argv[3] == "tied", sys.argv[4]
torch.manual_seed(0)
cfg = AutoConfig.for_model(kind, hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
                           tie_word_embeddings=tied, rope_theta=500000.0)
model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.05)
model.save_pretrained(root, safe_serialization=(fmt == "safetensors"))
vocab = {f"t{i}": i for i in range(512)}
tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2").save_pretrained(root)
with torch.no_grad():
    out = model(torch.tensor(%s)).logits
np.save(root + "/logits.npy", out.numpy())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-python", required=True, help="a Python with torch and transformers")
    args = ap.parse_args()
    import mlx.core as mx
    from mlx_lm import load

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("llama", "qwen2"):
            for tied in ("tied", "untied"):
                for fmt in ("safetensors", "bin"):
                    src = Path(tmp) / f"{kind}-{tied}-{fmt}"
                    subprocess.run([args.torch_python, "-c", TORCH_SIDE % TOKENS, str(src), kind, tied, fmt], check=True)
                    files = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".safetensors"))
                    out = convert(str(src), Path(tmp) / f"{src.name}-mlx", dtype="float32")
                    model, _ = load(str(out))
                    got = np.array(model(mx.array(TOKENS)))
                    ref = np.load(src / "logits.npy")
                    err = float(np.abs(got - ref).max())
                    worst = max(worst, err)
                    theta = json.loads((out / "config.json").read_text()).get("rope_theta")
                    print(f"{src.name:28} {', '.join(files):32} rope_theta {theta}  max |logit diff| {err:.2e}")
    print(f"worst {worst:.2e} ({'ok' if worst < 1e-4 else 'MISMATCH'}; float32 on both sides)")


if __name__ == "__main__":
    main()
