#!/usr/bin/env python
"""Where the time of a float32 LoRA step goes, MLX against PyTorch: per phase and per operation.

Run it with either interpreter; the same shapes as scripts/bench_step.py (GPT-J width: n_embd 4096, 16 heads,
MLP 16384, vocab 50400; 1 x 256 tokens; LoRA rank 16 on q/v):

    .venv/bin/python scripts/profile_step.py --side mlx   [--model DIR]
    .venv-torch/bin/python scripts/profile_step.py --side torch [--model DIR]
    .venv/bin/python scripts/profile_step.py --both [--model DIR]      # runs both, alternating, prints one table

Operations: the matmuls of a block and of the LM head, layer norm, GELU, softmax over the vocabulary, the
attention core, an elementwise add, and the LoRA branch. Phases (with --model, a GPT-J folder from
scripts/random_gptj.py in float32): forward, forward + backward of the GA loss, AdamW update. Each figure is
the fastest of --repeat timed runs after a warm-up (other jobs on a shared machine only slow runs down).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T, D, H, F, V, R = 256, 4096, 16, 16384, 50400, 16


def _best(fn, sync, repeat: int) -> float:
    fn()
    sync()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return min(out)


def ops_mlx(repeat: int) -> dict:
    import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)
    import mlx.core as mx
    import mlx.nn as nn

    from supercal_mlx.train.fastops import gelu_new

    k = mx.random.normal
    x, w, w1, wh = k((T, D)), k((D, D)), k((D, F)), k((D, V))
    h, logits = k((T, F)), k((T, V))
    a, b = k((D, R)), k((R, D))
    q = k((1, H, T, D // H))
    ln = nn.LayerNorm(D)
    res = {}

    def run(name, f):
        res[name] = _best(lambda: mx.eval(f()), lambda: None, repeat)

    run("matmul 256x4096 @ 4096x4096", lambda: x @ w)
    run("matmul 256x4096 @ 4096x16384", lambda: x @ w1)
    run("LM head 256x4096 @ 4096x50400", lambda: x @ wh)
    run("LoRA branch (x @ A) @ B, rank 16", lambda: (x @ a) @ b)
    run("layer norm (256, 4096)", lambda: ln(x))
    run("gelu_approx (256, 16384)", lambda: nn.gelu_approx(h))
    run("gelu_approx as x * sigmoid(2z), uncompiled (supercal)", lambda: gelu_new(h))
    run("logsumexp over vocab (256, 50400)", lambda: mx.logsumexp(logits, axis=-1))
    run("exp (256, 50400)", lambda: mx.exp(logits))
    run("add (256, 16384)", lambda: h + h)
    run("attention core (16 heads, 256 x 256)",
        lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=0.125, mask="causal"))
    return res


def ops_torch(repeat: int) -> dict:
    import torch
    import torch.nn.functional as Fn

    torch.manual_seed(0)
    k = torch.randn
    x, w, w1, wh = k(T, D), k(D, D), k(D, F), k(D, V)
    h, logits = k(T, F), k(T, V)
    a, b = k(D, R), k(R, D)
    q = k(1, H, T, D // H)
    lw, lb = torch.ones(D), torch.zeros(D)
    res = {}

    def run(name, f):
        with torch.no_grad():
            res[name] = _best(f, lambda: None, repeat)

    run("matmul 256x4096 @ 4096x4096", lambda: x @ w)
    run("matmul 256x4096 @ 4096x16384", lambda: x @ w1)
    run("LM head 256x4096 @ 4096x50400", lambda: x @ wh)
    run("LoRA branch (x @ A) @ B, rank 16", lambda: (x @ a) @ b)
    run("layer norm (256, 4096)", lambda: Fn.layer_norm(x, (D,), lw, lb))
    run("gelu_approx (256, 16384)", lambda: Fn.gelu(h, approximate="tanh"))
    run("logsumexp over vocab (256, 50400)", lambda: torch.logsumexp(logits, dim=-1))
    run("exp (256, 50400)", lambda: torch.exp(logits))
    run("add (256, 16384)", lambda: h + h)
    run("attention core (16 heads, 256 x 256)", lambda: Fn.scaled_dot_product_attention(q, q, q, is_causal=True))
    res["threads"] = torch.get_num_threads()
    return res


def phases_mlx(model_dir: str, repeat: int, fast_gelu: bool = True) -> dict:
    import supercal_mlx  # noqa: F401
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from supercal_mlx.model import load
    from supercal_mlx.train import losses as L
    from supercal_mlx.train.chunked import labelled_logprobs
    from supercal_mlx.train.fastops import gelu_new, use_fast_cpu_activations
    from supercal_mlx.train.lora import apply_lora

    model, _ = load(model_dir)
    if fast_gelu:
        use_fast_cpu_activations(model)
    mx.random.seed(0)
    apply_lora(model, rank=R, alpha=32.0, dropout=0.0, keys=["attn.q_proj", "attn.v_proj"], layers="all")
    model.train()
    ids = mx.random.randint(0, V, (1, T + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    mask = (mx.arange(T)[None] >= 40).astype(mx.float32)
    opt = optim.AdamW(learning_rate=5e-4)
    opt.init(model.trainable_parameters())

    def ga_full(inp, tgt, m):
        return L.ga(L.token_logprobs(model(inp), tgt), m)[0]

    def ga_chunked(inp, tgt, m):
        return L.ga(labelled_logprobs(model, inp, tgt, m), m)[0]

    full = nn.value_and_grad(model, ga_full)
    chunked = nn.value_and_grad(model, ga_chunked)
    grads = {}
    res = {
        "forward (logits)": _best(lambda: mx.eval(model(inputs)), lambda: None, repeat),
        "forward + backward, full logits": _best(lambda: mx.eval(full(inputs, targets, mask)), lambda: None, repeat),
        "forward + backward, chunked head": _best(lambda: (grads.update(g=chunked(inputs, targets, mask)[1]),
                                                           mx.eval(grads["g"])), lambda: None, repeat),
    }
    res["clip + AdamW update"] = _best(lambda: (opt.update(model, optim.clip_grad_norm(grads["g"], 1.0)[0]),
                                                mx.eval(model.trainable_parameters(), opt.state)), lambda: None, repeat)
    return res


def phases_torch(model_dir: str, repeat: int) -> dict:
    import torch
    import torch.nn.functional as Fn
    from peft import LoraConfig, get_peft_model
    from transformers import GPTJForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPTJForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    ids = torch.randint(0, V, (1, T + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    mask = (torch.arange(T)[None] >= 40).float()

    def fwd():
        with torch.no_grad():
            model(input_ids=inputs)

    def step():
        logits = model(input_ids=inputs).logits
        nll = Fn.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        (-(nll * mask).sum() / mask.sum()).backward()

    def update():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    res = {"forward (logits)": _best(fwd, lambda: None, repeat)}
    res["forward + backward, full logits"] = _best(lambda: (opt.zero_grad(), step()), lambda: None, repeat)
    res["clip + AdamW update"] = _best(update, lambda: None, repeat)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("mlx", "torch"))
    ap.add_argument("--both", action="store_true")
    ap.add_argument("--model", help="float32 GPT-J folder (scripts/random_gptj.py) for the phase timings")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="with --both: alternating runs per side")
    ap.add_argument("--torch-python", default=None, help="[default: $SUPERCAL_TORCH_PYTHON or .venv-torch/bin/python]")
    a = ap.parse_args()
    if not a.both:
        ops, phases = (ops_mlx, phases_mlx) if a.side == "mlx" else (ops_torch, phases_torch)
        out = ops(a.repeat) | (phases(a.model, a.repeat) if a.model else {})
        print(json.dumps(out))
        return
    import os

    torch_py = a.torch_python or os.environ.get("SUPERCAL_TORCH_PYTHON") or str(HERE.parent / ".venv-torch/bin/python")
    best: dict[str, dict] = {"mlx": {}, "torch": {}}
    for _ in range(a.rounds):
        for side, py in (("mlx", sys.executable), ("torch", torch_py)):
            cmd = [py, __file__, "--side", side, "--repeat", str(a.repeat)] + (["--model", a.model] if a.model else [])
            got = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            print(side, got, file=sys.stderr)
            for k, v in got.items():
                best[side][k] = min(v, best[side].get(k, v)) if k != "threads" else v
    print(f"\n| float32, 1 x {T} tokens, fastest of {a.rounds} x {a.repeat} | MLX (ms) | PyTorch (ms) | MLX / PyTorch |")
    print("|---|---:|---:|---:|")
    for k in best["mlx"]:
        t = best["torch"].get(k)
        print(f"| {k} | {best['mlx'][k] * 1e3:.1f} | " + (f"{t * 1e3:.1f} | {best['mlx'][k] / t:.2f}x |" if t else "- | - |"))
    print(f"\nPyTorch threads: {best['torch'].get('threads')}")


if __name__ == "__main__":
    main()
