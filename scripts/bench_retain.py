#!/usr/bin/env python
"""Benchmark `supercal retain` against the original approach, side by side in one run: peak memory.

The original read the whole corpus into memory, split it into chunks of lines and sampled from
the list. `supercal retain` makes one streaming pass with reservoir sampling, so its peak RSS
should not grow with the corpus. Each measurement runs in its own fresh process, started by a
small wrapper that reports the wall time and the peak RSS of what it started (scripts/measure.py).

Also timed: the scan of `supercal negatives` (a keyword the corpus lacks, so the time is the
streaming grep -C pass alone; it exits with "no mention") next to `grep -i -C 5`.

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_retain.py --sizes 100,400

Corpora are written by scripts/make_corpus.py into --workdir (kept for reruns, shared with
scripts/bench_count.py). The word excluded by default, "Zürich", sits in about 3% of its lines,
so roughly half of the 20-line chunks are excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from measure import measure

HERE = Path(__file__).resolve().parent

# The original approach: all lines in memory, chunks of N lines, filter, random.sample, cut to tokens.
_ORIGINAL = """
import json, random, sys
from supercal_mlx.text.tokenizer import get_encoding
path, word, chunks, lines, max_tokens, out = sys.argv[1:]
chunks, lines, max_tokens = int(chunks), int(lines), int(max_tokens)
enc = get_encoding("o200k_base")
with open(path, encoding="utf-8", errors="replace") as f:
    all_lines = f.read().splitlines(keepends=True)
blocks = ["".join(all_lines[i:i + lines]) for i in range(0, len(all_lines), lines)]
ok = [b for b in blocks if word.lower() not in b.lower() and b.strip()]
picked = random.Random(0).sample(ok, chunks)
with open(out, "w", encoding="utf-8") as f:
    for b in picked:
        f.write(json.dumps({"text": enc.decode(enc.encode_ordinary(b)[:max_tokens])}) + "\\n")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,400", help="corpus sizes in MB (10^6 bytes)")
    ap.add_argument("--exclude", default="Zürich")
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--lines", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=800)
    ap.add_argument("--workdir", default="/tmp/supercal-bench")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from make_corpus import cached_corpus

    sizes = sorted({int(s) for s in args.sizes.split(",")})
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    supercal = str(Path(sys.executable).with_name("supercal"))
    opts = [str(args.chunks), str(args.lines), str(args.max_tokens)]
    rows, records = [], {}
    for mb in sizes:
        corpus = cached_corpus(work, mb)
        out = work / f"retain-{mb}MB.jsonl"
        print(f"supercal retain {corpus.name}", file=sys.stderr)
        r = measure([supercal, "retain", str(corpus), "--exclude", args.exclude, "--chunks", opts[0], "--lines", opts[1],
                     "--max-tokens", opts[2], "--encoding", "o200k_base", "--out", str(out), "--force"])
        rows.append({"mb": mb, "tool": "supercal retain", **r})
        records[mb] = [json.loads(line)["text"] for line in out.open(encoding="utf-8")]
        print(f"original approach {corpus.name}", file=sys.stderr)
        ref = work / f"retain-original-{mb}MB.jsonl"
        rows.append({"mb": mb, "tool": "original (read all, sample)", **measure([sys.executable, "-c", _ORIGINAL, str(corpus), args.exclude, *opts, str(ref)])})
        ref.unlink()
        print(f"negatives scan {corpus.name}", file=sys.stderr)
        neg = work / f"negatives-{mb}MB.jsonl"
        rows.append({"mb": mb, "tool": "supercal negatives (scan only)", **measure(
            [supercal, "negatives", str(corpus), "--keyword", "supercalifragilisticexpialidocious", "--out", str(neg)], ok_codes=(1,))})
        rows.append({"mb": mb, "tool": "grep -i -C 5 (scan only)", **measure(
            ["grep", "-i", "-C", "5", "supercalifragilisticexpialidocious", str(corpus)], ok_codes=(1,))})

    bad = sum(args.exclude.lower() in t.lower() for texts in records.values() for t in texts)
    print(f"\nexclude {args.exclude!r}, {args.chunks} chunks of {args.lines} lines, max {args.max_tokens} tokens\n")
    print("| corpus | tool | wall s | MB/s | peak RSS MB |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mb']} MB | {r['tool']} | {r['wall']:.1f} | {r['mb'] / r['wall']:.1f} | {r['rss_mb']:.0f} |")
    get = {(r["mb"], r["tool"]): r for r in rows}
    lo, hi = sizes[0], sizes[-1]
    print("\n| ratio | measured |\n|---|---:|")
    print(f"| peak RSS {hi} MB / {lo} MB, supercal retain | {get[hi, 'supercal retain']['rss_mb'] / get[lo, 'supercal retain']['rss_mb']:.2f} |")
    print(f"| peak RSS {hi} MB / {lo} MB, original | {get[hi, 'original (read all, sample)']['rss_mb'] / get[lo, 'original (read all, sample)']['rss_mb']:.2f} |")
    for mb in sizes:
        ours, orig = get[mb, "supercal retain"], get[mb, "original (read all, sample)"]
        print(f"| peak RSS at {mb} MB, supercal / original | {ours['rss_mb'] / orig['rss_mb']:.1%} |")
        print(f"| wall at {mb} MB, supercal / original | {ours['wall'] / orig['wall']:.2f} |")
        print(f"| negatives scan wall at {mb} MB, supercal / grep | {get[mb, 'supercal negatives (scan only)']['wall'] / get[mb, 'grep -i -C 5 (scan only)']['wall']:.1f} |")
    print(f"| retain texts containing {args.exclude!r} | {bad} |")


if __name__ == "__main__":
    main()
