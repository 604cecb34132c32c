#!/usr/bin/env python
"""`supercal negatives` against `grep -i -C 5`, side by side in one run: wall and CPU time, throughput, ratio.

Rows, each a fresh process (scripts/measure.py) unless marked in-process, alternating, --repeat times; the
fastest run counts (other jobs on a shared machine only slow runs down):

- grep -i -C 5 KEYWORD CORPUS > FILE
- supercal negatives CORPUS --keyword KEYWORD (the whole command: start-up, scan, tokenizer, windows, output)
- the same with SUPERCAL_SCAN_WORKERS=2 (opt-in): a plain file of 32 MB or more scanned in two halves at once on
  Linux, the second by a forked child (data/scan_parallel.py); its CPU time includes the child's
- the block scan alone (data/scan.py + the grep state machine), in-process, timed around the scan only, in one
  process and in two; with --line-by-line also the line-by-line scan it replaced (Corpus.iter_lines + grep_chunks)
- the windows alone (in-process): tokenizing the chunks' windows, o200k_base already loaded
- fixed costs, whatever the corpus: `python -c pass`; `supercal --help` (Python, click and the package);
  importing what negatives imports (numpy, the scan, the windows); loading o200k_base (in-process)

CPU is user + system time of the process and its children (wait4's rusage); where it exceeds the wall time
a second core did part of the work.

Two corpora: scripts/make_corpus.py's --mb MB corpus as it is (no mention of the keyword: the scan is all
there is; negatives exits 1 with "no mention" and never loads the tokenizer), and a copy with a line
mentioning the keyword every MB.

    .venv/bin/python scripts/bench_negatives.py --mb 200 --repeat 5
    flock /tmp/supercal-heavy.lock .venv/bin/python scripts/bench_negatives.py --mb 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from measure import measure

HERE = Path(__file__).resolve().parent
KEYWORD = "supercalifragilisticexpialidocious"
TWO = ", two processes (SUPERCAL_SCAN_WORKERS=2)"

_INPROCESS = """
import json, os, resource, sys, time
from supercal_mlx.data.corpus import open_corpus
from supercal_mlx.data.negatives import _grep, grep_chunks, keyword_patterns, mention_windows
from supercal_mlx.data.scan import scan_lines
path, keyword, how = sys.argv[1:]
corp, (pattern, whole) = open_corpus(path), keyword_patterns(keyword)


def cpu():  # this process and its reaped children (the scan's forked part)
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


t = time.perf_counter(); c = cpu()
if how == "lines":
    chunks = list(grep_chunks(corp.iter_lines(), pattern, context=5))
else:
    chunks = list(_grep(scan_lines(corp, keyword, context=5), pattern, 5))
out = {"chunks": len(chunks), "wall": time.perf_counter() - t, "cpu": cpu() - c}
if how == "block+windows":
    from supercal_mlx.data.windows import Tokenized
    from supercal_mlx.text.tokenizer import from_encoding

    t = time.perf_counter(); c = cpu()
    tok = from_encoding("o200k_base")
    out["tokenizer"] = {"wall": time.perf_counter() - t, "cpu": cpu() - c}
    t = time.perf_counter(); c = cpu()
    n = 0
    for chunk in chunks:
        view = Tokenized(chunk.text, tok)
        for m in whole.finditer(chunk.text):
            n += len(mention_windows(view, *m.span(), window_tokens=800, stride=200))
    out["windows"] = {"wall": time.perf_counter() - t, "cpu": cpu() - c, "n": n}
print(json.dumps(out))
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


def _keep(best: dict, key: tuple, run: dict) -> None:
    if key not in best or run["wall"] < best[key]["wall"]:
        best[key] = run


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
    py, supercal, grep = sys.executable, str(Path(sys.executable).with_name("supercal")), shutil.which("grep")
    fixed_cmds = {"python -c pass": [py, "-c", "pass"], "supercal --help": [supercal, "--help"],
                  "import negatives' modules": [py, "-c", "import supercal_mlx.cli, supercal_mlx.data.negatives"]}
    best: dict[tuple[str, str], dict] = {}
    for _ in range(a.repeat):
        for name, cmd in fixed_cmds.items():
            _keep(best, ("fixed", name), measure(cmd))
        for label, corpus in corpora.items():
            # grep's output goes to a file: with stdout on /dev/null GNU grep stops at the first match
            _keep(best, (label, "grep -i -C 5"), measure([grep, "-i", "-C", "5", KEYWORD, str(corpus)],
                                                         log=work / "grep.out", ok_codes=(0, 1)))
            negatives = [supercal, "negatives", str(corpus), "--keyword", KEYWORD, "--out", str(work / "neg.jsonl"),
                         "--force"]
            for tag, env in (("", None), (TWO, {**os.environ, "SUPERCAL_SCAN_WORKERS": "2"})):
                run = measure(negatives, ok_codes=(0, 1), env=env)
                _keep(best, (label, "supercal negatives (whole command)" + tag), run)
            hows = ["block+windows" if label == "a mention per MB" else "block", "block, two processes"]
            for how in hows + (["lines"] if a.line_by_line else []):
                env = {**os.environ, "SUPERCAL_SCAN_WORKERS": "2"} if how.endswith("two processes") else None
                out = json.loads(subprocess.run([py, "-c", _INPROCESS, str(corpus), KEYWORD, how.split(",")[0]],
                                                capture_output=True, text=True, check=True, env=env).stdout)
                scan = ("line-by-line scan alone (in-process)" if how == "lines" else
                        "block scan alone (in-process)" + (TWO if env else ""))
                _keep(best, (label, scan), out)
                best[label, f"chunks ({'lines' if how == 'lines' else 'block'})"] = {"n": out["chunks"]}
                if "windows" in out:
                    _keep(best, ("fixed", "load o200k_base (in-process)"), out["tokenizer"])
                    _keep(best, (label, f"windows alone, {out['windows']['n']} (in-process)"), out["windows"])
        print({f"{k[0]}: {k[1]}": round(v.get("wall", v.get("n", 0)), 3) for k, v in best.items()}, file=sys.stderr)
    size = plain.stat().st_size / 1e6

    def cell(key: tuple) -> str:
        if key not in best:
            return "-"
        run = best[key]
        if "wall" not in run:
            return str(run["n"])
        return f"{run['wall']:.2f} s ({size / run['wall']:.0f} MB/s), CPU {run['cpu']:.2f} s"

    rows = list(dict.fromkeys(k for lab, k in best if lab != "fixed"))
    print(f"\n| {a.mb} MB corpus, best of {a.repeat} (wall, throughput, CPU) | " + " | ".join(corpora) + " |")
    print("|---|" + "---:|" * len(corpora))
    for k in rows:
        print(f"| {k} | " + " | ".join(cell((lab, k)) for lab in corpora) + " |")
    print(f"\n| fixed costs, best of {a.repeat} | wall | CPU |\n|---|---:|---:|")
    for (lab, k), run in best.items():
        if lab == "fixed":
            print(f"| {k} | {run['wall']:.3f} s | {run['cpu']:.3f} s |")
    print()
    for lab in corpora:
        g, cmd = best[lab, "grep -i -C 5"]["wall"], best[lab, "supercal negatives (whole command)"]["wall"]
        two = best[lab, "supercal negatives (whole command)" + TWO]["wall"]
        scan = best[lab, "block scan alone (in-process)"]["wall"]
        print(f"throughput vs grep -i -C 5, {lab}, {a.mb} MB: whole command {g / cmd:.2f}x ({cmd:.2f} s vs {g:.2f} s; "
              f"two scanning processes {g / two:.2f}x), block scan alone {g / scan:.2f}x")


if __name__ == "__main__":
    main()
