"""A faster second load of o200k_base / cl100k_base: their ranks kept as plain arrays beside tiktoken's cache.

Loading o200k_base takes about 0.2 s: tiktoken's ``load_tiktoken_bpe`` decodes 200,000 base64 lines one
Python call at a time (about 0.09 s), then its Rust ``CoreBPE`` builds its tables (about 0.1 s, left alone).
After the first load we write the ranks once as plain data: a header, the end offset and rank of every token
(little-endian uint32) and the tokens' bytes back to back. Checking and rebuilding the dict from that took 0.05-0.06 s
in a fresh process, against 0.10-0.13 s for tiktoken's parse.

Nothing is trusted that tiktoken would not trust: the file is used only when its sha256 equals the value in
:data:`SHA256` (written into this module from the ranks tiktoken itself loads from the rank file whose sha256
it checks; tests/test_foundation.py recomputes both), and it is parsed, never unpickled or executed. Anything
else (missing, damaged, another tiktoken layout) falls back to tiktoken's own load, which rewrites the file.
The ``tiktoken.Encoding`` is made by tiktoken's own constructor for the name (its pattern and special tokens)
with these ranks, and registered where ``tiktoken.get_encoding`` would keep it. tiktoken has no such cache;
written here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MAGIC = b"supercal tiktoken ranks 1\n"
# sha256 of the file this module writes for each encoding (see the module docstring)
SHA256 = {
    "o200k_base": "f7285eceb7afd9e0390956c74fc944b2f0844864b094a3c3b216bc0a953a9db0",
    "cl100k_base": "af3609b5a6adde1f027c34655d6ef4079273c8193e44ea112e47180cea893fe7",
}


def _uint32(values) -> bytes:
    from array import array

    out = array("I", values)
    if out.itemsize != 4:
        raise ValueError("no 4-byte unsigned int here")
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def _from_uint32(data: bytes) -> list[int]:
    from array import array

    out = array("I")
    out.frombytes(data)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tolist()


def encode_ranks(ranks: dict[bytes, int]) -> bytes:
    """The file's bytes for ``ranks`` (tokens in dict order; array, not numpy: `supercal tokens` needs no numpy)."""
    from itertools import accumulate

    return (MAGIC + len(ranks).to_bytes(8, "little") + _uint32(accumulate(map(len, ranks))) + _uint32(ranks.values())
            + b"".join(ranks))


def decode_ranks(data: bytes) -> dict[bytes, int]:
    n = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "little")
    at = len(MAGIC) + 8
    ends, values = _from_uint32(data[at:at + 4 * n]), _from_uint32(data[at + 4 * n:at + 8 * n])
    blob = data[at + 8 * n:]
    return dict(zip([blob[a:b] for a, b in zip([0, *ends[:-1]], ends)], values))


def cache_path(tiktoken_file: Path | None) -> Path | None:
    return None if tiktoken_file is None else tiktoken_file.with_name(tiktoken_file.name + ".supercal-ranks")


def load(name: str, path: Path | None) -> dict[bytes, int] | None:
    """The cached ranks of ``name`` when the file at ``path`` has the expected sha256, else None."""
    import hashlib

    if path is None or not SHA256.get(name):
        return None
    try:
        data = path.read_bytes()
    except OSError:  # missing, unreadable (another user's cache folder): tiktoken's own load then
        return None
    if hashlib.sha256(data).hexdigest() != SHA256[name] or not data.startswith(MAGIC):
        return None
    return decode_ranks(data)


def save(name: str, path: Path | None, ranks: dict[bytes, int]) -> None:
    """Write the cache for ``name`` from the ranks tiktoken loaded, when they give the expected file (atomically;
    a cache that cannot be written is only a slower next load)."""
    import hashlib
    import tempfile

    if path is None or not SHA256.get(name):
        return
    try:
        data = encode_ranks(ranks)
    except (ValueError, OverflowError):  # not 4-byte unsigned ints here, or a value that does not fit
        return
    if hashlib.sha256(data).hexdigest() != SHA256[name]:
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
