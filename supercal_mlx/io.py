"""Safe output and JSON lines: check destinations up front, write under a temporary name, rename at the end.

Every command that writes a file or a folder goes through these helpers, so an
interrupted or failed run never leaves something that looks complete, and an
existing result is never replaced without ``--force``. The one exception is a
run's logs (metrics.jsonl, probes.jsonl): they grow a flushed line at a time
(:func:`append_jsonl`), a torn last line is dropped when read (:func:`read_log`),
and a resume cuts them back atomically (:func:`truncate_log`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import SupercalError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Refuse an existing output unless ``force``; make sure its parent exists."""
    path = Path(path)
    if path.exists() and not force:
        raise SupercalError(f"{path} already exists; pass --force to replace it or choose another path")
    if not path.parent.exists():
        raise SupercalError(f"folder {path.parent} does not exist; create it first")
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *, force: bool = False, **kw) -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success."""
    path = check_output(path, force=force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600); results should not be
    try:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only on success.

    With ``force`` an existing ``path`` is replaced, but only after the new one is complete.
    """
    path = check_output(path, force=force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes folders private (0700); results should not be
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], *, force: bool = False) -> int:
    """Write records as JSON lines atomically; return how many were written."""
    n = 0
    with atomic_file(path, force=force, encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike, *, required: tuple[str, ...] = ()) -> list[dict]:
    """Read JSON lines; errors name the file and line and say what was expected."""
    path = Path(path)
    if not path.is_file():
        raise SupercalError(f"cannot read {path}: no such file")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SupercalError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per line")
            if not isinstance(rec, dict):
                raise SupercalError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in required if k not in rec]
            if missing:
                raise SupercalError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}; expected {', '.join(required)}")
            records.append(rec)
    if not records:
        raise SupercalError(f"{path} is empty; expected JSON lines with {', '.join(required) or 'records'}")
    return records


def append_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Append records as JSON lines, flushed, so a crash loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()


def read_log(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics/probes log (empty when the file does not exist); a torn last line is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def truncate_log(path: str | os.PathLike, max_step: int) -> list[dict]:
    """Keep only records with step <= max_step (atomically rewritten); return them."""
    kept = [r for r in read_log(path) if r.get("step", 0) <= max_step]
    if Path(path).exists():
        write_jsonl(path, kept, force=True)
    return kept
