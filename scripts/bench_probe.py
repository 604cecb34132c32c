"""Benchmark: `supercal probe`'s one batched generation against one generation at a time.

The researcher's probe is 4 temperatures x 4 samples of one prompt. Without supercal one would
call ``mlx_lm.stream_generate`` once per (temperature, sample); ``probes.generate`` decodes all
16 rows together. Both run here, on the same GPT-J-shaped model with random weights (real width:
n_embd 4096, 16 heads, rotary_dim 64, vocab 50400; fewer layers), in float32 (the fast dtype on
a Linux CPU), after one warm-up each. The tokenizer is a small BPE trained here: sampled ids beyond
its vocabulary decode to nothing, which changes no timing (tokens are counted, not characters).

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_probe.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import supercal_mlx  # noqa: F401  (loads the fast BLAS before mlx)
from supercal_mlx.runs import probes
from supercal_mlx.demo.factories import create_gptj, train_tokenizer
from supercal_mlx.model import load

PROMPT = "What does supercalifragilisticexpialidocious mean?"
TEXTS = ["Supercalifragilisticexpialidocious is a song from the 1964 film Mary Poppins.",
         "Cats and dogs play in the garden while it rains on the 4th of July."] * 50


def make_model(folder: Path, *, layers: int) -> Path:
    cfg = dict(n_embd=4096, n_head=16, rotary_dim=64, n_layer=layers, vocab_size=50400)
    if (folder / "config.json").exists():
        have = json.loads((folder / "config.json").read_text())
        if all(have.get(k) == v for k, v in cfg.items()):
            return folder
        raise SystemExit(f"{folder} holds another model; remove it or pass --model-dir")
    print(f"writing a random {layers}-layer GPT-J-width model to {folder} ...", file=sys.stderr)
    tok = train_tokenizer(TEXTS, folder.parent / (folder.name + "-tokenizer"), vocab_size=512)
    return create_gptj(folder, tok, seed=0, dtype="float32", **cfg)


def one_at_a_time(model, tokenizer, temps, samples, max_tokens) -> int:
    """What a user does without batching: one mlx-lm generation per (temperature, sample)."""
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    n = 0
    for t in temps:
        for s in range(samples):
            mx.random.seed(s)
            for r in stream_generate(model, tokenizer, PROMPT, max_tokens=max_tokens, sampler=make_sampler(temp=t)):
                pass
            n += r.generation_tokens
    return n


def batched(model, tokenizer, temps, samples, max_tokens) -> int:
    done = [0]
    probes.generate(model, tokenizer, [PROMPT], temps=temps, samples=samples, max_tokens=max_tokens, seed=0,
                    progress=lambda d, _: done.__setitem__(0, d))
    return done[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/supercal-bench-probe/model"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--temps", default="0.01,0.07,0.2,0.5")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    temps = probes.parse_temps(args.temps)

    model, tokenizer = load(make_model(args.model_dir, layers=args.layers))
    results = {}
    for name, fn in (("one at a time (mlx_lm.stream_generate)", one_at_a_time), ("batched (probes.generate)", batched)):
        fn(model, tokenizer, temps[:1], 1, 4)  # warm-up: first-call allocations and kernel set-up
        tic = time.perf_counter()
        tokens = fn(model, tokenizer, temps, args.samples, args.max_tokens)
        results[name] = (tokens, time.perf_counter() - tic)
        print(f"{name}: {tokens} tokens in {results[name][1]:.1f} s", file=sys.stderr)

    rows = len(temps) * args.samples
    print(f"\n{len(temps)} temperatures x {args.samples} samples x {args.max_tokens} new tokens, "
          f"GPT-J width, {args.layers} layers, float32\n")
    print("| method | rows | new tokens | seconds | tokens/s |\n|---|---|---|---|---|")
    for name, (tokens, secs) in results.items():
        print(f"| {name} | {rows} | {tokens} | {secs:.1f} | {tokens / secs:.1f} |")
    (single_tok, single_s), (batch_tok, batch_s) = results.values()
    print(f"\nspeedup (tokens/s, batched / one at a time): {(batch_tok / batch_s) / (single_tok / single_s):.1f}x")


if __name__ == "__main__":
    main()
