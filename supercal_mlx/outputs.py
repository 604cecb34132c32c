"""Output folders that supercal made, and only those, may be replaced; one writer at a time.

Every folder a command creates (an unlearn run, the demo folder, a converted or
fused model, a report) carries a small marker file, :data:`MARKER`
(``{"kind": ..., "version": ...}``). ``--force`` replaces a folder only when it
holds that marker with the same kind, or is empty; anything else is refused
with a message, so a mistyped ``--out`` never deletes a user's files. The
current folder and its ancestors are always refused, and so is a symbolic link.

Writers hold an OS lock (``fcntl.flock``) on a small lock file beside the
output, ``.NAME.lock``, for as long as they write: a second process writing the
same output is refused at once with the holder's pid, and the lock goes away
with the process however it dies (kill -9 too). The lock file is removed on a
clean release; the inode check in :func:`_acquire` makes that race-free.

Temporary names carry the writer's pid (``.NAME.<pid>-<random>.partial`` for
folders, ``.NAME.<pid>-<random>.tmp`` for files, ``.NAME.<pid>.old`` for an
old output moved aside during a swap). Under the lock, :func:`recover` restores
an old output whose swap was cut short and removes leftovers whose owner pid is
dead; :func:`leftovers` lists them for ``supercal clean``.

Written here because neither mlx-lm nor click has anything like it; plain
``os``/``fcntl`` calls, no extra dependency.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import SupercalError

MARKER = ".supercal-run.json"
MARKER_VERSION = 1
KINDS = {"unlearn": "an unlearn run", "demo": "a demo folder", "convert": "a converted model",
         "fuse": "a fused model", "report": "a run report"}
# .NAME.<pid>-<random>.partial / .tmp, .NAME.<pid>.old
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-[^.]*)?\.(?P<what>partial|tmp|old)$")


# --- checks ---------------------------------------------------------------------------------------------
def check_writable(folder: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``folder``: permission bits alone mislead (root, read-only mounts)."""
    folder = Path(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".supercal-write-check.", dir=folder)
    except OSError as e:
        raise SupercalError(f"cannot write in {folder}: {e.strerror}; choose another --out or fix its permissions") \
            from None
    os.close(fd)
    os.unlink(tmp)


def _refuse_special(path: Path) -> None:
    if path.is_symlink():
        raise SupercalError(f"{path} is a symbolic link; give the real path as --out (supercal does not write through links)")
    here = Path.cwd().resolve()
    full = path.resolve()
    if full == here or full in here.parents:
        raise SupercalError(f"--out {path} is the current folder or one above it; give a new folder, e.g. --out {path}/out")


def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker of a folder supercal made, or None (no marker, or not one of ours)."""
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") in KINDS else None


def write_marker(folder: str | os.PathLike, kind: str, **extra) -> None:
    from . import __version__

    data = {"kind": kind, "version": MARKER_VERSION, "supercal": __version__, **extra}
    (Path(folder) / MARKER).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def check_output_file(path: str | os.PathLike, *, force: bool = False) -> Path:
    """A file output: never a folder or a link; an existing file needs ``force``; the parent must be writable."""
    path = Path(path)
    _refuse_special(path)
    if path.is_dir():
        raise SupercalError(f"{path} is a folder; --out needs a file name here (e.g. {path}/out{path.suffix or '.out'})")
    if path.exists() and not force:
        raise SupercalError(f"{path} already exists; pass --force to replace it or choose another path")
    _check_parent(path)
    return path


def check_output_dir(path: str | os.PathLike, *, kind: str, force: bool = False) -> Path:
    """A folder output: refuse what ``--force`` may not replace (see the module docstring); parent writable."""
    path = Path(path)
    _refuse_special(path)
    if path.exists():
        if not path.is_dir():
            raise SupercalError(f"{path} is a file; --out needs a folder here")
        if not force:
            hint = f"continue it with --resume {path}, " if kind == "unlearn" else ""
            raise SupercalError(f"{path} already exists; {hint}replace it with --force, or choose another --out")
        marker = read_marker(path)
        if marker is None and any(path.iterdir()):
            raise SupercalError(f"{path} was not made by supercal (no {MARKER} in it); refusing to replace it with "
                                f"--force. Remove it yourself or choose another --out")
        if marker is not None and marker["kind"] != kind:
            raise SupercalError(f"{path} holds {KINDS[marker['kind']]}, not {KINDS[kind]}; refusing to replace it. "
                                "Choose another --out")
    _check_parent(path)
    return path


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise SupercalError(f"folder {path.parent} does not exist; create it first")
    check_writable(path.parent)


# --- locks ----------------------------------------------------------------------------------------------
def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def _acquire(lock: Path) -> int:
    import fcntl

    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SupercalError(f"cannot lock {lock.parent / lock.name[1:-5]}: cannot write {lock} ({e.strerror}); "
                                "fix the folder's permissions or choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                target = lock.with_name(lock.name[1:-len(".lock")])
                raise SupercalError(f"{target} is being written by another supercal process ({_holder(lock)}); wait "
                                    "for it to finish or choose another --out") from None
            raise
        try:  # the holder we waited on may have removed the file: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:  # a full disk: the lock holds all the same, the pid is only for messages
                pass
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``path`` (refused at once, naming the holder, when another process has it)."""
    lock = lock_path(path)
    fd = _acquire(lock)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


# --- leftovers ------------------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def leftovers(folder: str | os.PathLike, name: str | None = None) -> list[dict]:
    """Temporary things supercal left in ``folder`` (for output ``name`` only, if given):
    [{path, name, pid, kind: partial|tmp|old, alive}]."""
    folder = Path(folder)
    found = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _LEFTOVER.match(p.name)
        if not m or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        found.append({"path": p, "name": m["name"], "pid": pid, "kind": m["what"], "alive": pid_alive(pid)})
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_leftovers(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the leftovers (of output ``name`` only, if given) in ``folder`` whose writer is dead; old
    outputs moved aside are left to :func:`recover`."""
    removed = []
    for item in leftovers(folder, name):
        if not item["alive"] and item["kind"] != "old":
            _remove(item["path"])
            removed.append(item["path"])
    return removed


def scan(roots: list[str | os.PathLike], *, depth: int = 3) -> list[dict]:
    """Leftovers (see :func:`leftovers`) and stale lock files in ``roots`` and the folders below them,
    ``depth`` levels down (run folders, their checkpoints/); links are not followed."""
    found: list[dict] = []
    todo = [(Path(r), 0) for r in roots]
    while todo:
        folder, level = todo.pop(0)
        found += leftovers(folder)
        for lock in sorted(folder.glob(".*.lock")):
            if lock.is_file() and not _lock_held(lock):
                found.append({"path": lock, "name": lock.name[1:-5], "pid": None, "kind": "lock", "alive": False})
        if level < depth:
            with contextlib.suppress(OSError):
                todo += [(p, level + 1) for p in sorted(folder.iterdir())
                         if p.is_dir() and not p.is_symlink() and not _LEFTOVER.match(p.name)]
    return found


def _lock_held(lock: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def clean(item: dict) -> str:
    """Deal with one :func:`scan` item whose owner is dead; returns what was done."""
    path = item["path"]
    if item["kind"] == "old":
        target = path.with_name(item["name"])
        if not target.exists():
            os.replace(path, target)
            return f"restored as {target}"
        if read_marker(target) is None:
            return "kept (the output beside it was not made by supercal)"
    elif item["kind"] == "lock":
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return "removed"
    _remove(path)
    return "removed"


def recover(path: str | os.PathLike) -> list[Path]:
    """Under ``path``'s lock: bring back an old output whose swap was cut short, remove dead writers' leftovers.

    An old output (``.NAME.<pid>.old``) comes back when ``path`` is missing; when ``path`` is there
    (with its marker) the old one is the remains of a finished swap and goes.
    Returns what was removed.
    """
    path = Path(path)
    removed = []
    for item in leftovers(path.parent, path.name):
        if item["alive"]:
            continue
        if item["kind"] == "old":
            if not path.exists():
                os.replace(item["path"], path)
                continue
            if read_marker(path) is None:  # not ours to judge: leave both for the user
                continue
        _remove(item["path"])
        removed.append(item["path"])
    return removed


def restore_cut_short(path: str | os.PathLike) -> None:
    """Under ``path``'s lock, :func:`recover` it (for readers such as ``--resume`` that look before they lock)."""
    path = Path(path)
    if path.parent.is_dir() and leftovers(path.parent, path.name):
        with output_lock(path):
            recover(path)


def temp_name(path: Path, what: str) -> str:
    return f".{path.name}.{os.getpid()}-{os.urandom(3).hex()}.{what}"


def make_partial(path: str | os.PathLike) -> Path:
    """A fresh temporary folder beside ``path``, named for this process, with the usual permissions."""
    path = Path(path)
    tmp = path.with_name(temp_name(path, "partial"))
    tmp.mkdir(mode=0o777)  # the umask applies, as for any folder the user makes
    return tmp


def swap_in(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the complete folder ``tmp`` to ``path``; an existing ``path`` goes only after ``tmp`` is in place.

    Two renames; a kill between them leaves ``.NAME.<pid>.old`` and no ``path``, which :func:`recover`
    (run by the next writer under the lock) moves back.
    """
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        _remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def new_output_dir(path: str | os.PathLike, *, kind: str, force: bool = False, **marker) -> Iterator[Path]:
    """Check, lock, clean up, then yield a temporary folder that becomes ``path`` (with its marker) on success.

    The old ``path`` is replaced only after the new one is complete; on any error or Ctrl-C the
    temporary folder is removed and ``path`` is untouched.
    """
    path = check_output_dir(path, kind=kind, force=force)
    with output_lock(path):
        recover(path)
        check_output_dir(path, kind=kind, force=force)  # again: recover may have brought an old output back
        tmp = make_partial(path)
        try:
            yield tmp
            write_marker(tmp, kind, **marker)
            swap_in(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
