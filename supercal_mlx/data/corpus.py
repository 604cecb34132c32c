"""Reading corpora: plain, gzip, bzip2, xz or zip, streamed, as text.

The format is recognised by its magic bytes, not its name (enwik9 has no
extension, enwik9.zip holds one member). Invalid UTF-8 is replaced with U+FFFD
and counted, never fatal. Memory stays bounded by the block size.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import SupercalError

BLOCK_BYTES = 1 << 20

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
)

# Invalid UTF-8 is replaced; this handler counts the replaced bytes.
_invalid = [0]


def _count_and_replace(err: UnicodeDecodeError):
    _invalid[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("supercal-replace", _count_and_replace)


def _decompression_errors(fmt: str) -> tuple[type[Exception], ...]:
    """What a decompressor raises on a damaged file, besides OSError and EOFError."""
    if fmt == "zip":
        import zipfile

        return (zipfile.BadZipFile,)
    if fmt == "xz":
        import lzma

        return (lzma.LZMAError,)
    return ()


def detect_format(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "plain"


class Corpus:
    """A streamed text corpus.

    ``bytes_read`` is the position in the file on disk (compressed bytes for
    compressed inputs), ``size`` its total size: together they drive progress
    bars. ``text_bytes`` counts the uncompressed bytes, ``invalid_bytes`` the
    bytes that were not valid UTF-8.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise SupercalError(f"corpus {self.path} does not exist; check the path")
        if self.path.is_dir():
            raise SupercalError(f"corpus {self.path} is a folder; give a text file (.txt, .gz, .bz2, .xz, .zip)")
        try:
            self.format = detect_format(self.path)
        except OSError as e:
            raise SupercalError(f"cannot read corpus {self.path}: {e.strerror}") from None
        self.size = self.path.stat().st_size
        self.text_bytes = 0
        self.invalid_bytes = 0
        self._raw: BinaryIO | None = None

    @property
    def bytes_read(self) -> int:
        try:
            return self._raw.tell() if self._raw is not None else 0
        except (OSError, ValueError):
            return self.size

    def _members(self) -> Iterator[BinaryIO]:
        raw = open(self.path, "rb")
        self._raw = raw
        try:
            if self.format == "plain":
                yield raw
            elif self.format == "gzip":
                import gzip  # the decompressors are imported when needed: 10 ms of start-up otherwise

                yield gzip.GzipFile(fileobj=raw)
            elif self.format == "bzip2":
                import bz2

                yield bz2.BZ2File(raw)
            elif self.format == "xz":
                import lzma

                yield lzma.LZMAFile(raw)
            else:
                import zipfile

                with zipfile.ZipFile(raw) as zf:
                    for info in zf.infolist():
                        if not info.is_dir():
                            with zf.open(info) as member:
                                yield member
        finally:
            raw.close()

    def iter_bytes(self, block: int = BLOCK_BYTES, *, with_member: bool = False) -> Iterator:
        """Raw uncompressed bytes, in blocks of about ``block``; ``with_member``: (bytes, the file object they
        came from), so a caller may read on to a line's end (and add what it reads to ``text_bytes``)."""
        try:
            for member in self._members():
                while True:
                    data = member.read(block)
                    if not data:
                        break
                    self.text_bytes += len(data)
                    yield (data, member) if with_member else data
        except (OSError, EOFError, *_decompression_errors(self.format)) as e:
            raise SupercalError(f"cannot read corpus {self.path} ({self.format}): {e}; is the file truncated?") from None

    def iter_text(self, block: int = BLOCK_BYTES) -> Iterator[str]:
        """Decoded text in blocks; a UTF-8 sequence split across blocks is decoded whole."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="supercal-replace")
        before = _invalid[0]
        try:
            for data in self.iter_bytes(block):
                text = decoder.decode(data)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            self.invalid_bytes += _invalid[0] - before

    def iter_lines(self, block: int = BLOCK_BYTES) -> Iterator[str]:
        """Lines with their line ending ('\\n'); the last line may lack one."""
        rest = ""
        for text in self.iter_text(block):
            text = rest + text
            lines = text.split("\n")
            rest = lines.pop()
            for line in lines:
                yield line + "\n"
        if rest:
            yield rest


def open_corpus(path: str | os.PathLike, *, require_text: bool = True) -> Corpus:
    """A :class:`Corpus`, refusing an empty file up front."""
    corpus = Corpus(path)
    if require_text and corpus.size == 0:
        raise SupercalError(f"corpus {corpus.path} is empty; give a file with text in it")
    return corpus


def as_corpus(corpus: str | os.PathLike | Corpus) -> Corpus:
    """``corpus`` itself, or the corpus at that path."""
    return corpus if isinstance(corpus, Corpus) else open_corpus(corpus)


def progress_lines(corp: Corpus, progress: Callable[[int, int], None] | None) -> Iterator[str]:
    """The corpus's lines, calling ``progress(bytes read, size)`` every 4096 lines and once at the end."""
    for i, line in enumerate(corp.iter_lines()):
        if progress is not None and i % 4096 == 0:
            progress(corp.bytes_read, corp.size)
        yield line
    if progress is not None:
        progress(corp.size, corp.size)
