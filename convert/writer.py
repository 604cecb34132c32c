"""Streaming safetensors output: headers first, then tensor bytes written chunk by chunk.

Hand-written because ``mx.save_safetensors`` (and mlx-lm's ``save_model``)
needs every tensor of a shard in memory at once. Here the whole layout (names,
dtypes, shapes, byte offsets, shard boundaries) is fixed before any data is
read, so each converted chunk is written straight to its place with a
positioned write and freed. Files follow the safetensors format (8-byte
little-endian header length, JSON header padded to 8 bytes, packed data) and
mlx-lm's naming (``model.safetensors``, or ``model-0000i-of-0000n.safetensors``
with ``model.safetensors.index.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

_ST_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "uint32": "U32"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "uint32": 4}
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


class ShardWriter:
    """Lays ``groups`` of tensors out in shards of at most ``max_shard_bytes`` (a group never splits)."""

    def __init__(self, folder: Path, groups: list[list[OutTensor]], *, max_shard_bytes: int):
        shards: list[list[OutTensor]] = [[]]
        size = 0
        for group in groups:
            g = sum(t.nbytes for t in group)
            if shards[-1] and size + g > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].extend(group)
            size += g
        n = len(shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.folder = folder
        self.total_bytes = sum(t.nbytes for s in shards for t in s)
        self._where: dict[str, tuple[int, int]] = {}  # tensor -> (shard index, absolute offset of its data)
        self._files: list[tuple[Path, bytes, int]] = []  # (path, header bytes, file size)
        self.weight_map: dict[str, str] = {}
        for i, (fname, tensors) in enumerate(zip(names, shards)):
            header, begin = {"__metadata__": {"format": "mlx"}}, 0
            for t in tensors:
                header[t.name] = {"dtype": _ST_CODES[t.dtype], "shape": list(t.shape),
                                  "data_offsets": [begin, begin + t.nbytes]}
                begin += t.nbytes
                self.weight_map[t.name] = fname
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
            data_start = 8 + len(raw)
            for t in tensors:
                self._where[t.name] = (i, data_start + header[t.name]["data_offsets"][0])
            self._files.append((folder / fname, len(raw).to_bytes(8, "little") + raw, data_start + begin))
        self._fds: list[int] = []

    def __enter__(self) -> "ShardWriter":
        for path, head, size in self._files:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.pwrite(fd, head, 0)
            os.ftruncate(fd, size)
        return self

    def write(self, name: str, offset: int, data) -> None:
        """Write ``data`` (bytes-like) at byte ``offset`` inside tensor ``name``."""
        shard, start = self._where[name]
        view = memoryview(data).cast("B")
        pos = start + offset
        while view:  # pwrite may write less than asked
            n = os.pwrite(self._fds[shard], view, pos)
            view, pos = view[n:], pos + n

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                for fd in self._fds:
                    os.fsync(fd)
        finally:
            for fd in self._fds:
                os.close(fd)
        if exc[0] is None and len(self._files) > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
