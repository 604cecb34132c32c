"""The block scan of a large plain file in parts at once: forked processes scan all parts but the first.

Opt-in (``SUPERCAL_SCAN_WORKERS=2``): on the shared 2-core box it was measured on, two scanning processes were
no faster than one (scripts/bench_negatives.py has both rows). grep uses one core. A plain file is cut at line
starts into ``workers`` byte ranges of about equal size; this process scans the first range itself (so its
lines, and ``negatives``' windows for them, flow at once), while a forked child scans each other range with the
same code (:func:`.scan._scan`) and sends back, when it is done, the lines it would have yielded (numbered within
its range), its newline count, invalid bytes and bytes read. Lines from the ranges are renumbered by the
newlines before each range and yielded in file order, so the result is exactly the one-process scan's
(tests/test_scan.py compares them). The results are small (the lines around hits and the few lines at each
block's edges); a child whose lines pass :data:`CHILD_MAX_CHARS` (a word too common for grep-style contexts)
gives up, and so does any child that fails: this process then scans that range itself, with the one-process
scan's errors. Children are killed and reaped when the scan is left early.

Linux only (:func:`.scan.parallel_ok`): fork without exec is what makes a child cheap (a few ms, no second
Python start-up, no imports), and macOS's system libraries are not fork-safe. The results travel with
``marshal`` (lists of int and str, from our own child): nothing from outside is unmarshalled. No library we use
has a parallel scan; written here.
"""

from __future__ import annotations

import marshal
import os
import signal
from typing import Callable, Iterator

from .corpus import Corpus
from .scan import _scan

CHILD_MAX_CHARS = 64 << 20


def _cuts(path, size: int, parts: int) -> list[int]:
    """Line starts near ``size * i / parts``, with 0 and ``size``: the ranges' edges."""
    edges = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(size * i // parts - 1, edges[-1]))
            f.readline()  # to the start of the next line
            at = f.tell()
            if edges[-1] < at < size:
                edges.append(at)
    return edges + [size]


def _range_blocks(path, start: int, end: int, size: int) -> Iterator[bytes]:
    """Blocks of whole lines of the file's bytes [start, end); ``end`` is a line start or the file's end, so
    completing a read to its line's end never passes it."""
    with open(path, "rb") as f:
        f.seek(start)
        at = start
        while at < end:
            data = f.read(min(size, end - at))
            if not data:
                break
            at += len(data)
            if at < end and not data.endswith(b"\n"):
                rest = f.readline()
                at += len(rest)
                data += rest
            yield data


def _fork(path, start: int, end: int, probe, context: int, block: int) -> tuple[int, int] | None:
    """(pid, read end of its pipe) of a child scanning [start, end), or None when fork fails."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the child: scan, send, and leave without running the parent's clean-up code
        code = 1
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            tally, lines, chars = [0, 0, 0], [], 0
            for item in _scan(_range_blocks(path, start, end, block), probe, context, tally):
                lines.append(item)
                chars += len(item[1])
                if chars > CHILD_MAX_CHARS:
                    raise OverflowError
            payload = marshal.dumps((lines, tally))
            view = memoryview(len(payload).to_bytes(8, "little") + payload)
            while view:
                view = view[os.write(w, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _result(child: tuple[int, int] | None) -> tuple[list, list[int]] | None:
    """(lines, tally) a child sent, or None when it failed or gave up."""
    if child is None:
        return None
    pid, r = child
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or len(data) < 8 or int.from_bytes(data[:8], "little") != len(data) - 8:
        return None
    return marshal.loads(data[8:])


def scan_parts(corp: Corpus, probe, context: int, block: int, workers: int, tally: list[int],
               progress: Callable[[int, int], None] | None) -> Iterator[tuple[int, str]]:
    """:func:`.scan.scan_lines` of a plain file, its ranges after the first scanned by forked children."""
    edges = _cuts(corp.path, corp.size, workers)
    children = [_fork(corp.path, a, b, probe, context, block) for a, b in zip(edges[1:-1], edges[2:])]
    try:
        def first() -> Iterator[bytes]:
            for data in _range_blocks(corp.path, edges[0], edges[1], block):
                yield data
                if progress is not None:
                    progress(edges[0] + tally[2], corp.size)

        yield from _scan(first(), probe, context, tally)
        for i, child in enumerate(children):
            got = _result(child)
            children[i] = None
            if got is None:  # scan the range here, as one process would
                part = [0, 0, 0]
                lines = _scan(_range_blocks(corp.path, edges[i + 1], edges[i + 2], block), probe, context, part)
                for n, line in lines:
                    yield tally[0] + n, line
            else:
                part_lines, part = got
                for n, line in part_lines:
                    yield tally[0] + n, line
            for k in range(3):
                tally[k] += part[k]
            if progress is not None:
                progress(edges[i + 2], corp.size)
    finally:
        for child in children:
            if child is not None:  # left early (an error, Ctrl-C, the consumer stopped): stop and reap
                pid, r = child
                os.close(r)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
    corp.text_bytes += tally[2]
