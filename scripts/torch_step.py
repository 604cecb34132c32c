"""The PyTorch + peft side of scripts/bench_step.py: LoRA gradient-ascent steps on GPTJForCausalLM.

Runs in the separate torch environment (never a dependency of supercal-mlx); prints one JSON line with
the per-step times, losses and gradient norms, and the process's peak RSS.

    .venv-torch/bin/python scripts/torch_step.py --model DIR --tokens tokens.json --steps 3

The step is the original experiment's stack: transformers' GPTJForCausalLM in float32, peft LoRA
(rank 16, alpha 32, q_proj and v_proj), loss = minus the mean NLL of the completion tokens (gradient
ascent), clip_grad_norm_ 1.0, torch.optim.AdamW. Timed: forward, backward, clip, optimizer step.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import GPTJForCausalLM
from transformers.utils import logging


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GPT-J folder with transformers names (transformer.h.N...)")
    ap.add_argument("--tokens", required=True, help='JSON {"ids": [[...], ...], "n_prompt": [...]} (same length rows)')
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--grad-checkpoint", action="store_true")
    a = ap.parse_args()
    logging.set_verbosity_error()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = GPTJForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    if a.grad_checkpoint:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    load_seconds = time.perf_counter() - t0

    data = json.load(open(a.tokens))
    ids = torch.tensor(data["ids"])  # (B, L+1)
    inputs, targets = ids[:, :-1], ids[:, 1:]  # (B, L)
    # loss only on completion tokens: target position t predicts token t+1
    pos = torch.arange(targets.shape[1])[None]  # (1, L)
    mask = (pos + 1 >= torch.tensor(data["n_prompt"])[:, None]).float()  # (B, L)

    times, losses, norms = [], [], []
    for _ in range(a.steps):
        t = time.perf_counter()
        logits = model(input_ids=inputs).logits  # (B, L, V) float32
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, L)
        loss = -(nll * mask).sum() / mask.sum()  # gradient ascent: minus the completion NLL
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
        norms.append(norm.item())
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux; GB = 1e9 bytes
    print(json.dumps({"step_seconds": times, "loss": losses, "grad_norm": norms, "load_seconds": load_seconds,
                      "peak_rss_gb": peak_rss_gb, "threads": torch.get_num_threads(),
                      "trainable": sum(p.numel() for p in params), "tokens": int(mask.sum())}))


if __name__ == "__main__":
    main()
