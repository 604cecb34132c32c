#!/usr/bin/env python
"""Benchmark `supercal count` against the original approach, side by side in one run.

The original: read the whole corpus into one string, ``enc.encode`` it in one
call, ``collections.Counter`` the ids. Its plain ``encode`` raises on the text
"<|endoftext|>" (which the corpus contains), so it runs here as
``encode(text, disallowed_special=())``: the same tokens as ``encode_ordinary``.

With --repeat, the two tools take turns and each one's fastest run is shown.
Each measurement runs in its own fresh process, started by a small wrapper
that reports the wall time and the peak RSS of what it started
(scripts/measure.py). `supercal count` encodes on
threads inside one process, so that number is its whole footprint. Both
results are checked to be the same counts.

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_count.py --sizes 100,200,400 --compare 200 --repeat 2

Corpora are written by scripts/make_corpus.py into --workdir (kept for reruns).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from measure import measure

HERE = Path(__file__).resolve().parent

_ORIGINAL = """
import collections, sys
import numpy as np
from supercal_mlx.text.tokenizer import get_encoding   # tiktoken.get_encoding, seeded for offline use
path, out, encoding = sys.argv[1:]
enc = get_encoding(encoding)
with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
counter = collections.Counter(enc.encode(text, disallowed_special=()))
counts = np.zeros(enc.n_vocab, dtype=np.int64)
counts[list(counter)] = list(counter.values())
np.save(out, counts)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,200,400", help="corpus sizes in MB (10^6 bytes) for supercal's RSS")
    ap.add_argument("--compare", type=int, default=200, help="size in MB where supercal meets the original")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--encoding", default="o200k_base")
    ap.add_argument("--workdir", default="/tmp/supercal-bench")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool at --compare size; the fastest counts")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from make_corpus import cached_corpus

    import numpy as np

    from supercal_mlx.text.counting import load_counts

    sizes = sorted({int(s) for s in args.sizes.split(",")} | {args.compare})
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    supercal = str(Path(sys.executable).with_name("supercal"))
    rows = []
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())  # other work on the machine skews wall times
    for mb in sizes:
        corpus = cached_corpus(work, mb)
        out = work / f"counts-{mb}MB.npz"
        ref = work / f"original-{mb}MB.npy"
        ours = [supercal, "count", str(corpus), "--out", str(out), "--force", "--workers", str(args.workers),
                "--encoding", args.encoding]
        runs = {f"supercal count --workers {args.workers}": ours}
        if mb == args.compare:
            runs["original (read all, encode, Counter)"] = [sys.executable, "-c", _ORIGINAL, str(corpus), str(ref), args.encoding]
        best: dict[str, dict] = {}
        for rep in range(args.repeat if mb == args.compare else 1):  # interleaved, so drifting load hits both
            for tool, cmd in runs.items():
                print(f"{tool}: {corpus.name} (run {rep + 1})", file=sys.stderr)
                r = measure(cmd)
                if tool not in best or r["wall"] < best[tool]["wall"]:
                    best[tool] = r
        rows += [{"mb": mb, "tool": tool, **r} for tool, r in best.items()]
        if mb == args.compare:
            same = np.array_equal(np.load(ref), load_counts(out).counts)
            ref.unlink()

    print(f"\ncpu cores: {os.cpu_count()}, encoding {args.encoding}, load average before: {load}\n")
    print("| corpus | tool | wall s | MB/s | CPU s (user+sys) | peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mb']} MB | {r['tool']} | {r['wall']:.1f} | {r['mb'] / r['wall']:.1f} | {r['cpu']:.1f} | {r['rss_mb']:.0f} |")
    ours = {r["mb"]: r for r in rows if r["tool"].startswith("supercal")}
    orig = next(r for r in rows if r["tool"].startswith("original"))
    speed = orig["wall"] / ours[args.compare]["wall"]
    rss = ours[args.compare]["rss_mb"] / orig["rss_mb"]
    flat = ours[max(sizes)]["rss_mb"] / ours[min(sizes)]["rss_mb"]
    print(f"\n| ratio | measured | target |\n|---|---:|---|")
    print(f"| speed-up at {args.compare} MB (original wall / supercal wall) | {speed:.2f}x | >= 1.7x |")
    cpu = orig["cpu"] / ours[args.compare]["cpu"]
    print(f"| CPU time at {args.compare} MB (original / supercal) | {cpu:.2f}x | |")
    print(f"| peak RSS at {args.compare} MB (supercal / original) | {rss:.1%} | <= 10% |")
    print(f"| peak RSS {max(sizes)} MB / {min(sizes)} MB (supercal) | {flat:.2f} | within 1.2 |")
    print(f"| counts identical at {args.compare} MB | {'yes' if same else 'NO'} | yes |")


if __name__ == "__main__":
    main()
