#!/usr/bin/env python
"""`supercal negatives` against `grep -i -C 5`, side by side in one run: wall time and throughput on one corpus.

Rows, each a fresh process (scripts/measure.py), alternating, --repeat times; the fastest run counts
(other jobs on a shared machine only slow runs down):

- grep -i -C 5 KEYWORD CORPUS > FILE
- supercal negatives CORPUS --keyword KEYWORD (the whole command: start-up, tokenizer, scan, windows, output)
- the scan alone in one process: the block scan (data/scan.py) and the line-by-line scan it replaced
  (Corpus.iter_lines + grep_chunks), timed around the scan only

Two corpora: scripts/make_corpus.py's --mb MB corpus as it is (no mention of the keyword: the scan is all
there is; negatives exits 1 with "no mention"), and a copy with a line mentioning the keyword every MB.

    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_negatives.py --mb 200
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from measure import measure

HERE = Path(__file__).resolve().parent
KEYWORD = "supercalifragilisticexpialidocious"

_SCAN = """
import sys, time
from supercal_mlx.data.corpus import open_corpus
from supercal_mlx.data.negatives import _grep, grep_chunks, keyword_patterns
from supercal_mlx.data.scan import scan_lines
path, keyword, how = sys.argv[1:]
corp, pattern = open_corpus(path), keyword_patterns(keyword)[0]
t = time.perf_counter()
if how == "block":
    n = sum(1 for _ in _grep(scan_lines(corp, keyword, context=5), pattern, 5))
else:
    n = sum(1 for _ in grep_chunks(corp.iter_lines(), pattern, context=5))
print(n, time.perf_counter() - t)
"""


def with_mentions(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with one line mentioning the keyword after the first newline past each MB."""
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    with open(src, "rb") as f, open(dst, "wb") as out:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            block += f.readline()
            out.write(block + b"The word " + KEYWORD.capitalize().encode() + b" was sung again.\n")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="corpus size in MB (10^6 bytes)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/supercal-bench")
    ap.add_argument("--line-by-line", action="store_true", help="also time the previous line-by-line scan (slow)")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from make_corpus import cached_corpus

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    plain = cached_corpus(work, a.mb)
    corpora = {"no mention": plain, "a mention per MB": with_mentions(plain, work / f"corpus-{a.mb}MB-mentions.txt")}
    supercal = str(Path(sys.executable).with_name("supercal"))
    grep = shutil.which("grep")
    best: dict[tuple[str, str], float] = {}
    scans = [("block",)] + ([("lines",)] if a.line_by_line else [])
    for _ in range(a.repeat):
        for label, corpus in corpora.items():
            # grep's output goes to a file: with stdout on /dev/null GNU grep stops at the first match
            runs = {"grep -i -C 5": measure([grep, "-i", "-C", "5", KEYWORD, str(corpus)], log=work / "grep.out",
                                            ok_codes=(0, 1))["wall"],
                    "supercal negatives": measure([supercal, "negatives", str(corpus), "--keyword", KEYWORD, "--out",
                                                   str(work / "neg.jsonl"), "--force"], ok_codes=(0, 1))["wall"]}
            for (how,) in scans:
                out = subprocess.run([sys.executable, "-c", _SCAN, str(corpus), KEYWORD, how], capture_output=True,
                                     text=True, check=True).stdout.split()
                runs[f"{how} scan alone (in-process)"] = float(out[1])
                runs[f"chunks ({how})"] = int(out[0])
            for k, v in runs.items():
                best[label, k] = v if k.startswith("chunks") else min(v, best.get((label, k), float("inf")))
            print(label, runs, file=sys.stderr)
    size = plain.stat().st_size / 1e6
    print(f"\n| {a.mb} MB corpus, best of {a.repeat} | " + " | ".join(corpora) + " |\n|---|" + "---:|" * len(corpora))
    for k in [k for (lab, k) in best if lab == "no mention"]:
        if k.startswith("chunks"):
            print(f"| {k} | " + " | ".join(str(best[lab, k]) for lab in corpora) + " |")
        else:
            print(f"| {k}: s (MB/s) | " + " | ".join(f"{best[lab, k]:.2f} ({size / best[lab, k]:.0f})" for lab in corpora)
                  + " |")
    for lab in corpora:
        g = best[lab, "grep -i -C 5"]
        print(f"| throughput vs grep, {lab}: whole command {g / best[lab, 'supercal negatives']:.2f}x, "
              f"block scan {g / best[lab, 'block scan alone (in-process)']:.2f}x |")


if __name__ == "__main__":
    main()
