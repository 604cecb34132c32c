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
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import SupercalError


def check_output(path: str | os.PathLike, *, force: bool = False) -> Path:
    """A file output: refuse a folder, a link, an existing file without ``force``; the parent must be writable.

    Folder outputs use :func:`supercal_mlx.outputs.check_output_dir` (marker, lock, swap).
    """
    from .outputs import check_output_file

    return check_output_file(path, force=force)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", *, force: bool = False, **kw) -> Iterator[Any]:
    """Open a temporary file beside ``path`` (``.NAME.<pid>-<random>.tmp``); rename it over ``path`` only on success."""
    from .outputs import clean_leftovers, temp_name

    path = check_output(path, force=force)
    clean_leftovers(path.parent, path.name)  # .NAME.<pid>-*.tmp of writers killed before their rename
    tmp = path.with_name(temp_name(path, "tmp"))
    try:
        with open(tmp, "x" + mode.replace("w", ""), **kw) as f:
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
    No marker and no lock: for folders inside an output that is already locked (checkpoints);
    whole outputs use :func:`supercal_mlx.outputs.new_output_dir`.
    """
    from .outputs import make_partial, swap_in

    path = Path(path)
    if path.exists() and not force:
        raise SupercalError(f"{path} already exists; pass --force to replace it or choose another path")
    tmp = make_partial(path)
    try:
        yield tmp
        swap_in(tmp, path)
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


def read_text(path: str | os.PathLike, *, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or binary file is a one-line error naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SupercalError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise SupercalError(f"{path} is a folder; expected a {what}") from None
    except UnicodeDecodeError as e:
        raise SupercalError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                            f"expected a {what}") from None
    except OSError as e:
        raise SupercalError(f"cannot read {path}: {e.strerror}") from None


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> dict:
    """A JSON object from ``path``; empty, binary or non-JSON files are a one-line error naming the file."""
    text = read_text(path, what=what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        detail = "it is empty" if not text.strip() else f"line {e.lineno}: {e.msg}"
        raise SupercalError(f"{path} is not valid JSON ({detail}); expected a {what}") from None
    if not isinstance(data, dict):
        raise SupercalError(f"{path}: expected a JSON object, got {type(data).__name__}; expected a {what}")
    return data


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def read_jsonl(path: str | os.PathLike, *, required: tuple[str, ...] = (), text: tuple[str, ...] = (),
               types: dict | None = None, torn_tail_ok: bool = False) -> list[dict]:
    """Read JSON lines; errors name the file and line and say what was expected.

    ``text`` keys are required and hold strings (``{"prompt": null}`` is refused); ``types``
    maps other keys to the type(s) their values must have (``{"step": int}``). ``torn_tail_ok``
    drops a last line that is cut short (no newline and not JSON: what kill -9 during an
    append can leave), as ``--resume`` does.
    """
    path = Path(path)
    required = tuple(required) + tuple(k for k in text if k not in required)
    types = dict.fromkeys(text, str) | (types or {})
    lines = read_text(path, what=f"JSON lines file ({', '.join(required) or 'records'})").split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail_ok and lineno == len(lines) and records:
                break
            raise SupercalError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per line")
        if not isinstance(rec, dict):
            raise SupercalError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise SupercalError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}; expected {', '.join(required)}")
        for k, t in types.items():
            v = rec.get(k)
            if k in rec and (not isinstance(v, t) or (isinstance(v, bool) and t is not bool)):
                raise SupercalError(f"{path}:{lineno}: {k} is {json.dumps(v)[:40]}; expected {_type_name(t)}")
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
    for line in read_text(path, what="run log (JSON lines)").splitlines():
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
