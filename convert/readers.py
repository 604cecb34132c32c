"""Reading checkpoint tensors without torch: safetensors and PyTorch zip pickles.

Hand-written because neither mlx nor mlx-lm reads a PyTorch ``.bin``, and
``torch.load`` (or any plain unpickler) runs whatever code the pickle holds.
Here ``data.pkl`` is read by :class:`_SafeUnpickler`, which knows only a short
allow-list of globals (tensor rebuilding, the storage types, ``OrderedDict``)
and maps each to a harmless stand-in that records where the bytes are. Any
other global is refused by name before anything is called.

Tensors are not loaded: every reader returns :class:`TensorInfo` records
(file, byte offset, dtype, shape). :meth:`TensorInfo.read_rows` then reads a
range of rows with positioned reads into a fresh buffer. We read instead of
memory-mapping on purpose: pages of a mapping that have been touched count
in the process's resident memory until it is unmapped, so converting a 24 GB
checkpoint through one mapping would show 24 GB resident. Chunked reads keep
peak memory at a few chunks whatever the checkpoint size.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SupercalError

# safetensors dtype codes and PyTorch storage class names -> our dtype names.
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "BOOL": "bool",
              "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}
_TORCH_STORAGES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
                   "BFloat16Storage": "bfloat16", "BoolStorage": "bool", "ByteStorage": "uint8",
                   "CharStorage": "int8", "ShortStorage": "int16", "IntStorage": "int32", "LongStorage": "int64"}
# numpy has no bfloat16: its raw bits are read as uint16 and reinterpreted by mlx.
NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": np.uint16,
                "bool": np.bool_, "uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32,
                "int64": np.int64}


@dataclass
class TensorInfo:
    """Where one tensor's bytes are: ``nbytes`` contiguous bytes at ``offset`` in ``path`` (C order)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    member: str | None = None  # compressed zip member holding the bytes (offset is then inside it)
    strides: tuple[int, ...] | None = None  # element strides when not C-contiguous (rare)

    @property
    def itemsize(self) -> int:
        return np.dtype(NUMPY_DTYPES[self.dtype]).itemsize

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes

    def read_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` along the first axis (the whole tensor for a scalar), as a numpy array."""
        np_dtype = NUMPY_DTYPES[self.dtype]
        if self.strides is not None:  # not contiguous: gather the whole tensor, then slice
            span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides)) if self.numel else 0
            flat = np.frombuffer(self._read(self.offset, span * self.itemsize), dtype=np_dtype)
            full = np.lib.stride_tricks.as_strided(flat, self.shape, [s * self.itemsize for s in self.strides])
            return np.ascontiguousarray(full[start:stop] if self.shape else full)
        if not self.shape:
            return np.frombuffer(self._read(self.offset, self.itemsize), dtype=np_dtype).reshape(())
        stop = self.shape[0] if stop is None else stop
        rb = self.row_bytes()
        data = self._read(self.offset + start * rb, (stop - start) * rb)
        return np.frombuffer(data, dtype=np_dtype).reshape((stop - start, *self.shape[1:]))

    def _read(self, offset: int, n: int) -> bytearray:
        buf = bytearray(n)
        if self.member is None:
            with open(self.path, "rb") as f:
                got = os.preadv(f.fileno(), [buf], offset)
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                f.seek(offset)
                got = f.readinto(buf)
        if got != n:
            raise SupercalError(f"{self.path} ends early while reading {self.name}: it is truncated; download it again")
        return buf


# ---------------------------------------------------------------- safetensors

def read_safetensors(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor records from a safetensors file's header, checked against the file's size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SupercalError(f"{path} is too short to be a safetensors file (truncated?); download it again")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise SupercalError(f"{path} has a corrupt safetensors header (length {n}); download it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SupercalError(f"{path} has a corrupt safetensors header (not JSON); download it again") from None
    if not isinstance(header, dict):
        raise SupercalError(f"{path} has a corrupt safetensors header; download it again")
    header.pop("__metadata__", None)
    out = {}
    for name, meta in header.items():
        try:
            dtype = _ST_DTYPES[meta["dtype"]]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SupercalError(f"{path}: unsupported or corrupt entry for tensor {name}: {meta}") from None
        info = TensorInfo(name, dtype, shape, path, 8 + n + begin)
        if end - begin != info.nbytes or begin < 0:
            raise SupercalError(f"{path}: tensor {name} has {end - begin} bytes for shape {shape}; the file is corrupt")
        if 8 + n + end > size:
            raise SupercalError(f"{path} is truncated ({size} bytes, tensor {name} needs {8 + n + end}); download it again")
        out[name] = info
    return out


# ---------------------------------------------------------------- PyTorch zip pickles

class _Refused(Exception):
    pass


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(i, int) and i >= 0 for i in x):
        raise _Refused(f"a tensor with an invalid {what} {x!r}")
    return tuple(x)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # Stand-in for torch._utils._rebuild_tensor_v2: records, never calls anything.
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int) or storage_offset < 0:
        raise _Refused("a tensor that does not point into a storage")
    return _Tensor(storage, storage_offset, _ints(size, "size"), _ints(stride, "stride"))


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, _Tensor):
        raise _Refused("a parameter that is not a tensor")
    return data


_ALLOWED = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
}


class _SafeUnpickler(pickle.Unpickler):
    """Knows only tensor rebuilding, storage types and OrderedDict; refuses every other global."""

    def find_class(self, module, name):
        qual = f"{module}.{name}"
        if qual in _ALLOWED:
            return _ALLOWED[qual]
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(_TORCH_STORAGES[name])
        raise _Refused(f"global {qual}")

    def persistent_load(self, pid):
        # torch writes ('storage', storage_type, key, location, numel) for each storage.
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise _Refused(f"persistent id {pid!r:.80}")
        return _Storage(pid[1].dtype, pid[2], pid[4])


def read_torch_zip(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor records from a PyTorch (>= 1.6) zip checkpoint, without torch and without running pickle code."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            start = f.read(2)
        if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise SupercalError(
                f"{path} is in PyTorch's legacy (pre-1.6) pickle format, which supercal does not read; "
                "re-save it with a recent torch in a trusted environment, or use a safetensors copy")
        raise SupercalError(f"{path} is not a readable PyTorch zip checkpoint (truncated or corrupt); download it again")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: i for i in zf.infolist()}
            pkl = [n for n in members if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise SupercalError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            order = members.get(prefix + "byteorder")
            if order is not None and zf.read(order).strip() not in (b"little", b""):
                raise SupercalError(f"{path} was saved on a big-endian machine; re-save it on a little-endian one")
            with zf.open(pkl[0]) as f:
                try:
                    obj = _SafeUnpickler(f).load()
                except _Refused as e:
                    raise SupercalError(
                        f"{path} contains {e}, which a plain checkpoint never needs; refusing to read it "
                        "(nothing in it was run). Use a safetensors copy or a checkpoint from a trusted source") from None
                except Exception as e:  # malformed pickle bytes: say so, whatever the parser tripped on
                    raise SupercalError(f"{path} has a corrupt data.pkl ({type(e).__name__}: {e}); download it again") from None
            return _tensor_records(path, zf, members, prefix, obj)
    except zipfile.BadZipFile as e:
        raise SupercalError(f"{path} is a corrupt zip file ({e}); download it again") from None


def _tensor_records(path: Path, zf: zipfile.ZipFile, members: dict, prefix: str, obj) -> dict[str, TensorInfo]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise SupercalError(f"{path} does not hold a state dict (name -> tensor); save model.state_dict() instead")
    out = {}
    for name, t in obj.items():
        if not isinstance(t, _Tensor):
            raise SupercalError(f"{path}: entry {name} is not a tensor; save model.state_dict() instead")
        if len(t.stride) != len(t.shape):
            raise SupercalError(f"{path}: tensor {name} has a corrupt stride")
        info = members.get(f"{prefix}data/{t.storage.key}")
        if info is None:
            raise SupercalError(f"{path}: storage of tensor {name} is missing (truncated or corrupt); download it again")
        itemsize = np.dtype(NUMPY_DTYPES[t.storage.dtype]).itemsize
        if info.file_size < t.storage.numel * itemsize:
            raise SupercalError(f"{path}: storage of tensor {name} is shorter than it claims; the file is corrupt")
        contiguous = _c_strides(t.shape) == t.stride or 0 in t.shape
        span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) if 0 not in t.shape else 0
        if t.offset + span > t.storage.numel:
            raise SupercalError(f"{path}: tensor {name} reaches past the end of its storage; the file is corrupt")
        if info.compress_type == zipfile.ZIP_STORED:  # the usual case: bytes sit at a fixed file offset
            base, member = _stored_data_offset(zf, info), None
        else:
            base, member = 0, info.filename
        out[name] = TensorInfo(name, t.storage.dtype, t.shape, path, base + t.offset * itemsize, member,
                               None if contiguous else t.stride)
    return out


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _stored_data_offset(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    # The local file header (30 bytes + name + extra field) precedes the data; its extra field
    # may differ from the central directory's, so read its lengths from the file itself.
    zf.fp.seek(info.header_offset)
    local = zf.fp.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


# ---------------------------------------------------------------- folders

_SINGLE = {"safetensors": "model.safetensors", "pytorch": "pytorch_model.bin"}
_READERS = {"safetensors": read_safetensors, "pytorch": read_torch_zip}


def find_weights(folder: str | os.PathLike) -> tuple[str, list[Path]]:
    """(format, weight files) of a Hugging Face folder; safetensors preferred over .bin."""
    folder = Path(folder)
    for fmt, single in _SINGLE.items():
        index = folder / f"{single}.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise SupercalError(f"{index} is not a valid shard index (no weight_map); download it again") from None
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise SupercalError(f"{index} lists {missing[0]}, which is not in {folder}; download the missing shard(s)")
            return fmt, [folder / f for f in files]
        if (folder / single).is_file():
            return fmt, [folder / single]
    others = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
    hint = f" (found {', '.join(others[:3])} but no index naming them)" if others else ""
    raise SupercalError(f"{folder} has no model weights{hint}; expected model.safetensors, pytorch_model.bin "
                        "or a sharded *.index.json")


def read_tensors(fmt: str, files: list[Path]) -> dict[str, TensorInfo]:
    """All tensor records of a (possibly sharded) checkpoint; a name found twice is refused."""
    out: dict[str, TensorInfo] = {}
    for path in files:
        for name, info in _READERS[fmt](path).items():
            if name in out:
                raise SupercalError(f"tensor {name} appears in both {out[name].path.name} and {path.name}; the shards disagree")
            out[name] = info
    return out
