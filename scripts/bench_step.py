"""One LoRA unlearning step, supercal (MLX) against PyTorch + peft, side by side in one run.

The same work on both sides: a random GPT-J-width model (n_embd 4096, 16 heads, rotary_dim 64, vocab
50400, 2 layers) in float32, one forget example of 1 x 256 input tokens, loss ga (minus the completion
NLL), LoRA rank 16 / alpha 32 on attn.q_proj and attn.v_proj, AdamW (lr 5e-4), clip 1.0. Both load the
same weight files and the same token ids. Each side runs in its own process for --steps steps:

- supercal: `supercal unlearn --config run.yaml` (the real trainer); step time and MLX's peak memory come
  from its metrics.jsonl (step_seconds, peak_memory_gb);
- PyTorch: scripts/torch_step.py in the torch environment (transformers GPTJForCausalLM + peft).

Optional rows on the same weights stored in bfloat16 and computed in float32 (compute_dtype):
--bf16-base (weights cast in 8 MB row chunks right before each matmul, forward and backward), and
--grad-checkpoint (the same with grad_checkpoint: each block recomputed in the backward pass, which
saves activations; at 256 tokens it costs more time than it saves memory).

Step time is the median of the steps after the first (the first includes one-off work on both sides).
Peak memory is measured the same way for both: the process's peak RSS (wait4's ru_maxrss, taken by a small
shim parent, see scripts/measure.py), which includes loading the weights. The PyTorch interpreter:
--torch-python, else $SUPERCAL_TORCH_PYTHON, else .venv-torch/bin/python (scripts/setup_torch_bench.sh
makes it). Heavy: run it alone, e.g.

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_step.py --bf16-base --grad-checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
from pathlib import Path

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)

from measure import measure

HERE = Path(__file__).resolve().parent
GPTJ_WIDTH = dict(n_embd=4096, n_head=16, rotary_dim=64, vocab_size=50400)


def run_measured(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` with output to ``log``; return (its own peak RSS in GB, wall seconds). Exits if it fails."""
    r = measure(cmd, log=log)
    return r["rss_mb"] * 2**20 / 1e9, r["wall"]  # GB = 1e9 bytes


def write_forget(path: Path, model_dir: Path, *, rows: int, tokens: int, seed: int = 0) -> dict:
    """``rows`` forget records of exactly ``tokens`` tokens each (after the trainer's truncation); returns the
    token ids and prompt lengths as the trainer sees them (for the PyTorch side)."""
    from mlx_lm.utils import load_tokenizer

    from supercal_mlx.train.batches import encode_completions
    from random_gptj import TOKENIZER_TEXT

    tok = load_tokenizer(model_dir)
    words = TOKENIZER_TEXT.split()
    rng = random.Random(seed)
    records = [{"prompt": " ".join(rng.choice(words) for _ in range(tokens // 6)),
                "completion": " Supercalifragilistic " + " ".join(rng.choice(words) for _ in range(tokens))}
               for _ in range(rows)]
    examples = encode_completions(records, tok, max_tokens=tokens + 1)
    assert all(len(ids) == tokens + 1 for ids, _ in examples), [len(ids) for ids, _ in examples]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"ids": [ids for ids, _ in examples], "n_prompt": [n for _, n in examples]}


def run_supercal(work: Path, model_dir: Path, forget: Path, *, tokens: int, steps: int, batch: int,
                 extra: dict | None = None, name: str = "supercal") -> dict:
    """`supercal unlearn` on ``forget``; metrics of every step plus the process's peak RSS."""
    import yaml

    run = work / f"run-{name}"
    settings = dict(model=str(model_dir), forget=str(forget), out=str(run), max_tokens=tokens + 1, loss="ga",
                    lora_rank=16, lora_alpha=32.0, lora_keys=["attn.q_proj", "attn.v_proj"], lr=5e-4, steps=steps,
                    batch_size=batch, max_grad_norm=1.0, checkpoint_every=10_000, seed=0, force=True)
    settings.update(extra or {})
    (work / f"{name}.yaml").write_text(yaml.safe_dump({k: v for k, v in settings.items() if k != "force"}))
    cli = [str(Path(sys.executable).parent / "supercal")]
    rss, wall = run_measured(cli + ["unlearn", "--config", str(work / f"{name}.yaml"), "--force"], work / f"{name}.log")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"step_seconds": [m["step_seconds"] for m in metrics], "loss": [m["loss"] for m in metrics],
            "grad_norm": [m["grad_norm"] for m in metrics], "mlx_peak_gb": max(m["peak_memory_gb"] for m in metrics),
            "peak_rss_gb": rss, "wall_seconds": wall}


def median_after_first(xs: list[float]) -> float:
    return statistics.median(xs[1:] if len(xs) > 1 else xs)


def best(runs: list[dict]) -> dict:
    """Several runs of one side: the fastest median step (others' jobs on this machine only slow runs
    down), the largest peak memory (conservative), step 1 of the first run."""
    return runs[0] | {"median_step": min(median_after_first(r["step_seconds"]) for r in runs),
                      "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
                      "mlx_peak_gb": max(r.get("mlx_peak_gb", 0) for r in runs), "runs": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/supercal-bench-step", help="scratch folder (model, data, runs)")
    ap.add_argument("--torch-python", default=os.environ.get("SUPERCAL_TORCH_PYTHON"),
                    help="Python with torch + transformers + peft [default: $SUPERCAL_TORCH_PYTHON, else "
                         ".venv-torch/bin/python, which scripts/setup_torch_bench.sh makes]")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="runs per side, alternating; the fastest counts")
    ap.add_argument("--tokens", type=int, default=256, help="input tokens per example")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--bf16-base", action="store_true",
                    help="also run supercal on the same weights stored in bfloat16, computed in float32")
    ap.add_argument("--grad-checkpoint", action="store_true",
                    help="also run the bfloat16 base (float32 compute) with grad_checkpoint")
    ap.add_argument("--full-logits", action="store_true",
                    help="also run supercal float32 with the full (B, L, V) logits (SUPERCAL_FULL_LOGITS=1) instead "
                         "of the chunked head at labelled positions")
    ap.add_argument("--blas", metavar="LIB",
                    help="also run supercal float32 with this BLAS library loaded instead of OpenBLAS "
                         "(SUPERCAL_OPENBLAS), e.g. MKL's libmkl_rt.so from `pip install mkl` in another venv")
    ap.add_argument("--keep", action="store_true", help="keep the model folders for another run")
    ap.add_argument("--json-out", help="also write the results here")
    a = ap.parse_args()
    a.torch_python = a.torch_python or str(HERE.parent / ".venv-torch" / "bin" / "python")
    if not Path(a.torch_python).exists():
        sys.exit(f"no PyTorch interpreter at {a.torch_python}: make one with scripts/setup_torch_bench.sh, or pass "
                 "--torch-python / set SUPERCAL_TORCH_PYTHON")

    from random_gptj import write_random_gptj

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    dtypes = ["float32"] + (["bfloat16"] if a.bf16_base or a.grad_checkpoint else [])
    models = {dt: work / f"model-{a.n_layer}l-{dt}" for dt in dtypes}
    for dt, model_dir in models.items():
        if not (model_dir / "config.json").exists():
            shutil.rmtree(model_dir, ignore_errors=True)
            write_random_gptj(model_dir, dtype=dt, n_layer=a.n_layer, **GPTJ_WIDTH)  # same seed: same values
    forget = work / "forget.jsonl"
    tokens = write_forget(forget, models["float32"], rows=1, tokens=a.tokens)
    (work / "tokens.json").write_text(json.dumps(tokens))

    print(f"{a.n_layer} layers; batch 1 x {a.tokens} tokens; {a.steps} steps x {a.repeat} runs", file=sys.stderr)
    # (side, model dtype, extra settings, environment): the supercal rows asked for, run one after another
    variants = [("supercal", "float32", None, {})]
    variants += [("supercal-full", "float32", None, {"SUPERCAL_FULL_LOGITS": "1"})] if a.full_logits else []
    variants += [("supercal-blas", "float32", None, {"SUPERCAL_OPENBLAS": a.blas})] if a.blas else []
    variants += [("supercal-bf16", "bfloat16", {"compute_dtype": "float32"}, {})] if a.bf16_base else []
    variants += [("supercal-bf16-ckpt", "bfloat16", {"compute_dtype": "float32", "grad_checkpoint": True}, {})
                 ] if a.grad_checkpoint else []
    sides: dict[str, list[dict]] = {name: [] for name, *_ in variants} | {"pytorch": []}
    for _ in range(a.repeat):
        for name, dtype, extra, env in variants:
            os.environ.update(env)
            try:
                sides[name].append(run_supercal(work, models[dtype], forget, tokens=a.tokens, steps=a.steps, batch=1,
                                                name=name, extra=extra))
            finally:
                for key in env:
                    del os.environ[key]
            print(f"{name}: {sides[name][-1]}", file=sys.stderr)
        rss, wall = run_measured([a.torch_python, str(HERE / "torch_step.py"), "--model", str(models["float32"]),
                                  "--tokens", str(work / "tokens.json"), "--steps", str(a.steps)], work / "torch.log")
        pt = json.loads((work / "torch.log").read_text().strip().splitlines()[-1])
        sides["pytorch"].append(pt | {"peak_rss_gb": rss, "wall_seconds": wall})
        print(f"pytorch: {sides['pytorch'][-1]}", file=sys.stderr)

    res = {k: best(v) for k, v in sides.items() if v}
    pt = res["pytorch"]
    cols = [k for k in ("supercal", "supercal-full", "supercal-blas", "supercal-bf16", "supercal-bf16-ckpt") if k in res]
    head = {"supercal": "supercal, float32", "supercal-full": "supercal, float32, full logits",
            "supercal-blas": f"supercal, float32, {Path(a.blas or '').name}",
            "supercal-bf16": "supercal, bf16 base + float32 compute",
            "supercal-bf16-ckpt": "supercal, bf16 base + float32 compute + grad checkpoint"}

    def row(label, fmt, key=None, get=None, ratio=False, target=""):
        get = get or (lambda r: r[key])
        cells = [fmt.format(get(res[c])) for c in cols] + [fmt.format(get(pt))]
        cells += [f"{get(res[c]) / get(pt):.2f}x" if ratio else "" for c in cols]
        return "| " + " | ".join([label] + cells + [target]) + " |"

    print(f"\n| {a.n_layer}-layer GPT-J width, 1 x {a.tokens} tokens, best of {a.repeat} | "
          + " | ".join(head[c] for c in cols) + " | PyTorch + peft, float32 | "
          + " | ".join(f"ratio ({head[c]})" for c in cols) + " | target |")
    print("|" + "---|" * (3 + 2 * len(cols)))
    print(row("step time, median after the first (s)", "{:.2f}", "median_step", ratio=True, target="<= 1.0x"))
    print(row("peak RSS of the process (GB)", "{:.2f}", "peak_rss_gb", ratio=True, target="<= 0.8x"))
    print(row("MLX peak during a step, mx.get_peak_memory (GB)", "{:.2f}",
              get=lambda r: r.get("mlx_peak_gb") or math.nan))
    print(row("first step (s)", "{:.2f}", get=lambda r: r["step_seconds"][0]))
    print(row("step 1 loss (same tokens)", "{:.5f}", get=lambda r: r["loss"][0]))
    print(row("step 1 grad norm (LoRA A inits differ)", "{:.4g}", get=lambda r: r["grad_norm"][0]))
    print(row("process wall time (s)", "{:.1f}", "wall_seconds"))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(sides, indent=1))
    if not a.keep:
        for model_dir in models.values():
            shutil.rmtree(model_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
