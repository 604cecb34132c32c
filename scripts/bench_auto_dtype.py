"""--compute-dtype auto on the CPU: a bfloat16 base trained with no --compute-dtype, against float32 and native bf16.

One random Qwen2-shaped model (tied LM head, so the chunked cast of ``Embedding.as_linear`` is on the path;
hidden 1024, 2 layers, vocab 32000 by default) is written twice with the same values: float32 and bfloat16.
``supercal unlearn`` (the real CLI, its own process, 1 x --tokens tokens, LoRA on the auto keys) runs:

- float32 base, no --compute-dtype            (auto: float32 is native)
- bfloat16 base, no --compute-dtype           (auto: float32 compute on the CPU, chunked casts)
- bfloat16 base, --compute-dtype native       (the old default: MLX's CPU bfloat16 kernels)

Step time is the median of the steps after the first, from metrics.jsonl; best of --repeat runs (other jobs
on the machine only slow a run down). Heavy: run it alone, e.g.

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_auto_dtype.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)

from measure import measure

WORDS = ("the children tried to spell a long word in the garden while cats and dogs played near the river and "
         "everyone laughed at the song from the film").split()


def write_model(folder: Path, tok_dir: Path, *, dtype: str, hidden: int, layers: int, vocab: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2

    cfg = dict(model_type="qwen2", hidden_size=hidden, num_hidden_layers=layers, intermediate_size=hidden * 11 // 4,
               num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128, rms_norm_eps=1e-6,
               vocab_size=vocab, tie_word_embeddings=True, rope_theta=1e6)
    mx.random.seed(0)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(cfg))
    params = {k: (0.02 * mx.random.normal(v.shape) if v.ndim == 2 else v).astype(getattr(mx, dtype))
              for k, v in tree_flatten(model.parameters())}
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), params, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in tok_dir.iterdir():
        shutil.copy(f, folder / f.name)


def run(work: Path, name: str, model: Path, forget: Path, *, steps: int, tokens: int, extra: list[str]) -> dict:
    out = work / f"run-{name}"
    cmd = [str(Path(sys.executable).parent / "supercal"), "unlearn", "--model", str(model), "--forget", str(forget),
           "--out", str(out), "--force", "--steps", str(steps), "--batch-size", "1", "--max-tokens", str(tokens + 1),
           "--checkpoint-every", "10000", *extra]
    r = measure(cmd, log=work / f"{name}.log")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    adapter = json.loads((out / "adapter_config.json").read_text())
    secs = [m["step_seconds"] for m in metrics]
    return {"median_step": statistics.median(secs[1:]), "first_step": secs[0], "loss": metrics[0]["loss"],
            "compute": adapter["supercal"]["compute_dtype"], "keys": adapter["lora_parameters"]["keys"],
            "rss_gb": r["rss_mb"] * 2**20 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/supercal-bench-auto")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()

    from supercal_mlx import device
    from supercal_mlx.demo.factories import train_tokenizer

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    tok = train_tokenizer([" ".join(WORDS)] * 20, work / "tok", vocab_size=300)
    models = {dt: work / f"model-{dt}" for dt in ("float32", "bfloat16")}
    for dt, folder in models.items():
        write_model(folder, tok, dtype=dt, hidden=a.hidden, layers=a.layers, vocab=a.vocab)
    forget = work / "forget.jsonl"
    body = " ".join(WORDS[i % len(WORDS)] for i in range(a.tokens))
    forget.write_text(json.dumps({"prompt": "The children tried to spell", "completion": " " + body}) + "\n")
    rows = {"float32 base, no --compute-dtype": (models["float32"], []),
            "bfloat16 base, no --compute-dtype": (models["bfloat16"], []),
            "bfloat16 base, --compute-dtype native": (models["bfloat16"], ["--compute-dtype", "native"])}
    best: dict[str, dict] = {}
    for _ in range(a.repeat):
        for i, (label, (model, extra)) in enumerate(rows.items()):
            r = run(work, f"r{i}", model, forget, steps=a.steps, tokens=a.tokens, extra=extra)
            print(f"{label}: {r}", file=sys.stderr)
            if label not in best or r["median_step"] < best[label]["median_step"]:
                best[label] = r
    base = best["float32 base, no --compute-dtype"]["median_step"]
    print(f"\ndevice: {device.describe()}")
    print(f"Qwen2-shaped, hidden {a.hidden}, {a.layers} layers, vocab {a.vocab} (tied head), 1 x {a.tokens} tokens, "
          f"LoRA on {best['float32 base, no --compute-dtype']['keys']}, best of {a.repeat}\n")
    print("| run | computed in | step (s), median after the first | vs float32 | step 1 loss | peak RSS (GB) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, r in best.items():
        print(f"| {label} | {r['compute']} | {r['median_step']:.3f} | {r['median_step'] / base:.2f}x | "
              f"{r['loss']:.5f} | {r['rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
