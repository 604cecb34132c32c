"""Peak memory of `supercal convert` on a GPT-J-shaped checkpoint of several GB, against mlx_lm.convert.

Writes a random GPT-J (real width n_embd 4096, vocab 50400, fewer layers) to a
scratch folder twice, as a PyTorch zip .bin in float16 (written here without
torch) and as safetensors in float32, converts each to a float16 MLX folder in
a fresh subprocess, and reports the subprocess's peak RSS as a fraction of the
checkpoint size (target <= 0.35). For safetensors, mlx_lm.convert runs on the
same files in the same way, side by side (it cannot read a .bin); the .bin is also
converted with 4-bit quantization. Everything it
writes is deleted at the end. Heavy: run it alone,

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_convert.py [--layers 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests/fixtures/gptj/st-f32-rot4"
CHUNK = 1 << 24  # elements of random data generated at a time


def gptj_shapes(n_embd: int, n_layer: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes = {"transformer.wte.weight": (vocab, n_embd)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (n_embd,), p + "ln_1.bias": (n_embd,)})
        shapes.update({p + f"attn.{k}_proj.weight": (n_embd, n_embd) for k in "qkv"})
        shapes.update({p + "attn.out_proj.weight": (n_embd, n_embd),
                       p + "mlp.fc_in.weight": (4 * n_embd, n_embd), p + "mlp.fc_in.bias": (4 * n_embd,),
                       p + "mlp.fc_out.weight": (n_embd, 4 * n_embd), p + "mlp.fc_out.bias": (n_embd,)})
    shapes.update({"transformer.ln_f.weight": (n_embd,), "transformer.ln_f.bias": (n_embd,),
                   "lm_head.weight": (vocab, n_embd), "lm_head.bias": (vocab,)})
    return shapes


def random_chunks(numel: int, dtype, rng):
    for start in range(0, numel, CHUNK):
        yield (0.02 * rng.standard_normal(min(CHUNK, numel - start), dtype=np.float32)).astype(dtype)


def write_safetensors(folder: Path, shapes: dict, rng) -> None:
    sys.path.insert(0, str(ROOT))
    from supercal_mlx.convert.writer import OutTensor, ShardWriter

    with ShardWriter(folder, [[OutTensor(k, "float32", s)] for k, s in shapes.items()], max_shard_bytes=1 << 40) as w:
        for name, shape in shapes.items():
            done = 0
            for chunk in random_chunks(int(np.prod(shape)), np.float32, rng):
                w.write(name, done, chunk)
                done += chunk.nbytes


def _pickle_state_dict(shapes: dict) -> bytes:
    """data.pkl as torch.save writes it (protocol 2), emitted opcode by opcode since torch is not imported."""
    P = pickle

    def glob(module: str, name: str) -> bytes:
        return P.GLOBAL + f"{module}\n{name}\n".encode()

    def s(text: str) -> bytes:
        raw = text.encode()
        return P.BINUNICODE + len(raw).to_bytes(4, "little") + raw

    def i(n: int) -> bytes:
        return P.BININT + n.to_bytes(4, "little", signed=True) if n < 2**31 else P.LONG1 + bytes([8]) + n.to_bytes(8, "little")

    def tup(items: list[bytes]) -> bytes:
        return P.MARK + b"".join(items) + P.TUPLE

    out = [P.PROTO + b"\x02", glob("collections", "OrderedDict"), P.EMPTY_TUPLE, P.REDUCE, P.MARK]
    for key, (name, shape) in enumerate(shapes.items()):
        numel = int(np.prod(shape))
        strides = [int(np.prod(shape[d + 1:])) for d in range(len(shape))]
        storage = tup([s("storage"), glob("torch", "HalfStorage"), s(str(key)), s("cpu"), i(numel)]) + P.BINPERSID
        args = tup([storage, i(0), tup([i(d) for d in shape]), tup([i(d) for d in strides]), P.NEWFALSE,
                    glob("collections", "OrderedDict") + P.EMPTY_TUPLE + P.REDUCE])
        out += [s(name), glob("torch._utils", "_rebuild_tensor_v2"), args, P.REDUCE]
    out += [P.SETITEMS, P.STOP]
    return b"".join(out)


def write_torch_bin(path: Path, shapes: dict, rng) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr("archive/data.pkl", _pickle_state_dict(shapes))
        zf.writestr("archive/byteorder", "little")
        for key, shape in enumerate(shapes.values()):
            numel = int(np.prod(shape))
            with zf.open(f"archive/data/{key}", "w", force_zip64=True) as f:
                for chunk in random_chunks(numel, np.float16, rng):
                    f.write(chunk.tobytes())
        zf.writestr("archive/version", "3\n")


def make_checkpoint(folder: Path, fmt: str, *, n_embd: int, n_layer: int, vocab: int) -> int:
    sys.path.insert(0, str(ROOT))
    from supercal_mlx.demo.factories import gptj_config

    folder.mkdir(parents=True)
    shapes = gptj_shapes(n_embd, n_layer, vocab)
    rng = np.random.default_rng(0)
    if fmt == "bin":
        write_torch_bin(folder / "pytorch_model.bin", shapes, rng)
    else:
        write_safetensors(folder, shapes, rng)
    cfg = gptj_config(vocab_size=vocab, n_embd=n_embd, n_layer=n_layer, n_head=16, rotary_dim=64)
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, folder / f)
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def child(tool: str, src: str, out: str) -> None:
    """Runs in the measured subprocess: one conversion, then its own peak RSS as JSON."""
    import resource

    t0 = time.perf_counter()
    if tool in ("supercal", "supercal-q4"):
        from supercal_mlx.convert import convert

        convert(src, out, dtype="float16", quantize=tool == "supercal-q4", q_bits=4, q_group_size=64)
    elif tool == "mlx_lm":
        import supercal_mlx  # noqa: F401  (same BLAS set-up as supercal)
        from mlx_lm.convert import convert

        convert(src, out, dtype="float16")
    else:  # "imports": the floor every run pays (python, numpy, mlx, mlx-lm)
        import supercal_mlx  # noqa: F401
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
        from mlx_lm.models import gptj  # noqa: F401
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"peak_rss": peak, "seconds": time.perf_counter() - t0}))


def measure(tool: str, src: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", tool, str(src), str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{r.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--n-embd", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=50400)
    ap.add_argument("--dir", default="/tmp", help="scratch folder (needs ~2.5x the float32 checkpoint size free)")
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)

    scratch = Path(tempfile.mkdtemp(prefix="supercal-bench-convert-", dir=args.dir))
    rows = []
    try:
        base = measure("imports", scratch, scratch / "none")
        print(f"imports alone: peak RSS {base['peak_rss'] / 1e9:.2f} GB", file=sys.stderr)
        for fmt, tools in (("bin", ["supercal", "supercal-q4"]), ("safetensors", ["supercal", "mlx_lm"])):
            src = scratch / fmt
            t0 = time.perf_counter()
            size = make_checkpoint(src, fmt, n_embd=args.n_embd, n_layer=args.layers, vocab=args.vocab)
            print(f"wrote {fmt} checkpoint {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for tool in tools:
                m = measure(tool, src, scratch / "out")
                rows.append((fmt, tool, size, m["peak_rss"], m["seconds"]))
                print(f"  {tool}: peak RSS {m['peak_rss'] / 1e9:.2f} GB, {m['seconds']:.0f} s", file=sys.stderr)
            shutil.rmtree(src)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nGPT-J shape: n_embd {args.n_embd}, {args.layers} layers, vocab {args.vocab}; output float16; "
          f"imports alone {base['peak_rss'] / 1e9:.2f} GB RSS\n")
    print("| source | converter | checkpoint GB | peak RSS GB | peak RSS / checkpoint | seconds |")
    print("|---|---|---|---|---|---|")
    for fmt, tool, size, peak, secs in rows:
        name = {"supercal": "supercal convert", "supercal-q4": "supercal convert --quantize (4-bit)",
                "mlx_lm": "mlx_lm.convert"}[tool]
        src = "PyTorch .bin float16" if fmt == "bin" else "safetensors float32"
        print(f"| {src} | {name} | {size / 1e9:.2f} | {peak / 1e9:.2f} | {peak / size:.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
