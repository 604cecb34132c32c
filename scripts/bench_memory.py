"""Peak memory of one unlearning step at full GPT-J-6B shapes (random weights, no download).

28 layers, n_embd 4096, 16 heads, rotary_dim 64, vocab 50400; the original experiment's batch of
2 x 900 tokens; loss ga, LoRA rank 16 on attn.q_proj and attn.v_proj, AdamW, clip 1.0; gradient
checkpointing. Each base is written shard by shard (never a float32 copy of the whole model) and
deleted afterwards:

- f32:       float32 weights (24 GB at 28 layers: for --n-layer runs; the LM head is chunked, see --full-logits)
- bf16:      bfloat16 weights (~12.1 GB on disk), compute_dtype float32,          target <= 16 GB
- q4:        4-bit weights (group 64, bfloat16 scales; embedding and lm_head too),
             compute_dtype float32 (QLoRA; weights dequantized in small chunks
             right before each matmul, forward and backward),                     target <= 8 GB
- bf16-native, q4-native: the same folders computed in their own dtypes (no compute_dtype), with
             MLX's bfloat16 matmul and quantized_matmul: the paths for GPUs (Metal, CUDA). On a
             CPU they are ~30x and 50-75x slower than float32 BLAS (quantized, 1800x4096 @
             4096x4096: 53 s against 1.1 s), so a step takes hours here; not run by default

--loss takes a comma list, one row each (same model folder): e.g. ga,graddiff,tokenstein. graddiff and
tokenstein get retain texts of the same length; tokenstein (with its retain KL) adds the teacher pass: the
adapters-off base reads 2 twins per example (the word replaced by made-up words) and, for the word's own
positions, the example itself, under stop_gradient.

Each step is `supercal unlearn` in its own process; reported: the process's peak RSS (wait4's
ru_maxrss through scripts/measure.py's shim; it includes loading), MLX's own peak (metrics.jsonl peak_memory_gb) and the step time.
The original (PyTorch, float32 + LoRA, Mac CPU) took 61 of 64 GB. Heavy (12 GB of files, many minutes
on 2 cores): run it alone,

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)
from bench_step import GPTJ_WIDTH, run_supercal, write_forget
from random_gptj import write_random_gptj

VARIANTS = {"f32": dict(dtype="float32"), "bf16": dict(dtype="bfloat16"), "q4": dict(dtype="bfloat16", q_bits=4),
            "bf16-native": dict(dtype="bfloat16"), "q4-native": dict(dtype="bfloat16", q_bits=4)}
TARGET_GB = {"f32": 32, "bf16": 16, "q4": 8, "bf16-native": 16, "q4-native": 8}
LABELS = {"f32": "float32 base (chunked LM head)", "bf16": "bfloat16 base, float32 compute", "q4": "4-bit base (QLoRA), float32 compute",
          "bf16-native": "bfloat16 base, bfloat16 compute", "q4-native": "4-bit base (QLoRA), quantized_matmul"}


def write_retain(path: Path, rows: int, tokens: int) -> Path:
    """Retain texts of about ``tokens`` tokens (for the losses with a retain term; ga ignores them)."""
    from random_gptj import TOKENIZER_TEXT

    words = TOKENIZER_TEXT.split()
    path.write_text("".join(json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(tokens))}) + "\n"
                            for i in range(rows)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/supercal-bench-memory")
    ap.add_argument("--variants", default="bf16,q4", help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--n-layer", type=int, default=28)
    ap.add_argument("--tokens", type=int, default=900, help="input tokens per example")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--full-logits", action="store_true",
                    help="run each variant also with the full (B, L, V) logits (SUPERCAL_FULL_LOGITS=1), beside the "
                         "default chunked LM head at labelled positions, on the same model folder")
    ap.add_argument("--loss", default="ga", help="unlearning loss(es), comma list, a row each (npo_kl exercises the "
                                                 "reference and KL paths; tokenstein the teacher pass on twins)")
    ap.add_argument("--micro-batches", default="1", help="comma list, a row each (e.g. 1,2: the batch whole and in "
                                                         "2 pieces, --micro-batches)")
    ap.add_argument("--phases", action="store_true",
                    help="also run scripts/memory_phases.py on each row's settings (its own process): MLX's peak in "
                         "each phase of the step (forget / retain value_and_grad, update, the body alone)")
    ap.add_argument("--json-out")
    a = ap.parse_args()

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in a.variants.split(","):
        model_dir = work / f"model-{name}"
        shutil.rmtree(model_dir, ignore_errors=True)
        t0 = time.time()
        try:
            write_random_gptj(model_dir, n_layer=a.n_layer, **VARIANTS[name], **GPTJ_WIDTH)
            size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e9
            print(f"{name}: wrote {size:.2f} GB in {time.time() - t0:.0f} s", file=sys.stderr)
            forget = work / "forget.jsonl"
            write_forget(forget, model_dir, rows=a.batch, tokens=a.tokens)
            rows = [(loss, full, int(m)) for loss in a.loss.split(",") for full in ([False, True] if a.full_logits
                                                                                     else [False])
                    for m in a.micro_batches.split(",")]
            for loss, full, pieces in rows:
                extra = dict(grad_checkpoint=True, compute_dtype=None if name.endswith("-native") else "float32",
                             loss=loss, micro_batches=pieces)
                if loss.endswith(("_kl", "graddiff")) or loss in ("tokenstein", "value_swap"):
                    extra["retain"] = str(write_retain(work / "retain.jsonl", a.batch, a.tokens))
                if loss in ("tokenstein", "value_swap"):  # made-up stand-ins for the forget texts' word
                    extra.update(tokenstein_words=["Quorblenitastic", "Vimbraxolutic"], twins=2)
                key = (name + (f"+{loss}" if "," in a.loss else "") + ("+full-logits" if full else "")
                       + (f"+{pieces} micro-batch{'es' if pieces > 1 else ''}" if "," in a.micro_batches else ""))
                env = {"SUPERCAL_FULL_LOGITS": "1"} if full else {}
                os.environ.update(env)
                try:
                    r = run_supercal(work, model_dir, forget, tokens=a.tokens, steps=a.steps, batch=a.batch,
                                     name=key, extra=extra)
                finally:
                    for k in env:
                        os.environ.pop(k, None)
                results[key] = r | {"weights_gb": size, "row": [name, loss, full, pieces]}
                if a.phases:
                    env = os.environ | env
                    done = subprocess.run([sys.executable, str(Path(__file__).parent / "memory_phases.py"), "--config",
                                           str(work / f"{key}.yaml")], env=env, capture_output=True, text=True)
                    if done.returncode:
                        sys.exit(f"memory_phases.py failed on {key}:\n{done.stderr[-3000:]}")
                    results[key]["phases"] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{key}: {results[key]}", file=sys.stderr)
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)

    print(f"\n| GPT-J-6B shapes ({a.n_layer} layers), {a.batch} x {a.tokens} tokens, loss {a.loss}, grad checkpoint "
          "| weights on disk (GB) | peak RSS (GB) | MLX peak (GB) | step (s) | loss | target |\n|---|---|---|---|---|---|---|")
    for name, r in results.items():
        label = ", ".join([LABELS[name.split("+")[0]]] + name.split("+")[1:]).replace("full-logits", "full logits")
        print(f"| {label} | {r['weights_gb']:.2f} | {r['peak_rss_gb']:.2f} | {r['mlx_peak_gb']:.2f} "
              f"| {r['step_seconds'][0]:.0f} | {r['loss'][0]:.4f} | <= {TARGET_GB[name.split('+')[0]]} GB |")
    twins = {tuple(r["row"]): r for r in results.values()}
    for key, r in results.items():  # each chunked row against its full-logits twin
        name, loss, full, pieces = r["row"]
        if not full and (name, loss, True, pieces) in twins:
            full = twins[name, loss, True, pieces]
            print(f"{key}: MLX peak {r['mlx_peak_gb']:.2f} GB = {r['mlx_peak_gb'] / full['mlx_peak_gb']:.2f}x the full "
                  f"logits' {full['mlx_peak_gb']:.2f} GB; above the weights on disk "
                  f"{r['mlx_peak_gb'] - r['weights_gb']:.2f} vs {full['mlx_peak_gb'] - full['weights_gb']:.2f} GB")
    if a.phases:
        names = list(results)
        print("\n| MLX peak above the phase's start (GB), scripts/memory_phases.py | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for phase in ("forget", "retain", "update", "body_forward", "body_grad"):
            if any(phase in results[k]["phases"] for k in names):
                print(f"| {phase} | " + " | ".join(f"{results[k]['phases'][phase]:.2f}" if phase in results[k]["phases"]
                                                  else "-" for k in names) + " |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
