"""Float32 matmul speed with the system OpenBLAS that supercal_mlx preloads, against MLX's bundled BLAS.

Each side runs in a fresh process (the BLAS is chosen when mlx is first imported):

    .venv/bin/python scripts/bench_blas.py [--n 2048] [--repeat 5]

Prints GFLOPS for both and their ratio, and checks the two products agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, sys, time
import numpy as np
import supercal_mlx, mlx.core as mx
from supercal_mlx import _blas
n, repeat, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
a = mx.array(rng.standard_normal((n, n)).astype(np.float32))
b = mx.array(rng.standard_normal((n, n)).astype(np.float32))
mx.eval(a @ b)  # warm up
best = float("inf")
for _ in range(repeat):
    t = time.perf_counter(); c = a @ b; mx.eval(c); best = min(best, time.perf_counter() - t)
np.save(out, np.array(c[:64, :64]))
print(json.dumps({"blas": _blas.describe(), "seconds": best, "gflops": 2 * n**3 / best / 1e9}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import numpy as np

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, off in (("system OpenBLAS", "0"), ("bundled BLAS", "1")):
            out = os.path.join(tmp, f"{off}.npy")
            env = dict(os.environ, SUPERCAL_NO_OPENBLAS=off)
            res = subprocess.run([sys.executable, "-c", _CHILD, str(args.n), str(args.repeat), out],
                                 env=env, capture_output=True, text=True, check=True)
            rows[label] = json.loads(res.stdout.strip().splitlines()[-1]) | {"product": np.load(out)}
    fast, slow = rows["system OpenBLAS"], rows["bundled BLAS"]
    print(f"float32 {args.n}x{args.n} matmul, best of {args.repeat}")
    print("| BLAS | seconds | GFLOPS |\n|---|---:|---:|")
    for r in (fast, slow):
        print(f"| {r['blas']} | {r['seconds']:.3f} | {r['gflops']:.1f} |")
    print(f"speed-up: {fast['gflops'] / slow['gflops']:.1f}x; products agree: "
          f"{np.allclose(fast['product'], slow['product'], rtol=1e-4, atol=1e-3)}")


if __name__ == "__main__":
    main()
