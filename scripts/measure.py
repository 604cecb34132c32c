"""Run a command and measure it: exit code, wall and CPU seconds, and its own peak RSS.

The command runs as the child of a small Python shim, which reports the child's wait4 rusage. It is
not started straight from the benchmark: Linux carries a process's peak RSS over across fork and exec,
so a child of a large benchmark process (one that has just written model files, say) would report at
least its parent's peak (measured: a 0.3 GB child read 1.97 GB when started from a 2 GB parent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SHIM = """
import json, os, subprocess, sys, time
t = time.perf_counter()
with open(sys.argv[1] or os.devnull, "w") as out:
    p = subprocess.Popen(sys.argv[2:], stdout=out, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - t,
                  "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}))
"""


def measure(cmd: list[str], *, log: str | os.PathLike | None = None, ok_codes=(0,), env: dict | None = None) -> dict:
    """{'rc', 'wall', 'cpu', 'rss_mb'} of ``cmd`` (rss_mb: peak RSS in MiB, ru_maxrss being KiB on Linux);
    its output goes to ``log`` (or nowhere); ``env``: its environment (None: this one). Exits with the log's tail
    when the exit code is not in ``ok_codes``."""
    res = subprocess.run([sys.executable, "-c", _SHIM, str(log or ""), *cmd], capture_output=True, text=True, check=True,
                         env=env)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["rc"] not in ok_codes:
        tail = f"; see {log}:\n{Path(log).read_text()[-3000:]}" if log else ""
        raise SystemExit(f"failed (exit {out['rc']}): {' '.join(map(str, cmd))}{tail}")
    return out
