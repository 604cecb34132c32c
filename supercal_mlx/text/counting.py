r"""Exact, streaming, parallel token counting of a corpus -> counts.npz.

The counts equal ``Counter(enc.encode_ordinary(text))`` for each source's whole
text, but memory stays bounded: the text is read in blocks and cut into chunks
only at places where tiktoken's pre-tokenizer splits anyway, so encoding the
chunks one by one gives exactly the tokens of the whole.

Where a cut is safe (see :data:`_SAFE_CUT`): between a letter or digit and a
following character that is not a letter, mark, digit or apostrophe, e.g.
before the space in "word next" or before the period in "word.". Every
pattern tiktoken ships (gpt2/r50k/p50k, cl100k_base, o200k_base) is a list
of alternatives with no lookbehind; a match that has consumed a letter or digit
can only continue with letters, marks, digits or an "'s"-style suffix. Such a
character ends the match exactly as the end of the text would, so the matches
before the cut are the same whether the text continues or stops there, and the
matching after it starts afresh at the same place. Each piece is then
byte-pair encoded on its own, so the tokens are the same. tests/test_counting.py
checks this against one-shot encoding at every safe cut of tricky text.

A model folder's own tokenizer (``model=DIR``) is counted the same way when it
is a byte-level BPE whose pre-tokenizer is one of the patterns above: either
Hugging Face's ``ByteLevel`` with the gpt2 pattern (``use_regex``; GPT-2, GPT-J,
GPT-NeoX), or a ``Split`` (isolated) with a pattern of :data:`SPLIT_PATTERNS`
followed by ``ByteLevel(use_regex=false)`` (Llama 3, Qwen2/2.5/3, Mistral
Tekken). The Llama-3 and Qwen2 patterns are alternatives of the same shape as
tiktoken's cl100k_base (Llama 3's is cl100k_base's without possessive
quantifiers; Qwen2's takes digits one at a time), with no lookbehind and no
``$``, so the argument above holds for them word for word: a match that has
consumed a letter or digit continues only with letters or digits (``\p{L}+``,
``\p{N}{1,3}``, ``\p{N}``) or ends, and the only lookahead, ``\s+(?!\S)``,
cannot match text that ends with a letter or digit. ``ByteLevel(use_regex=false)``
only maps bytes to symbols, and BPE runs on each piece, so the tokens are the
pieces' tokens. tiktoken's own cl100k_base and o200k_base spellings are accepted
in a Split too (their ``$``, end of line in the tokenizers library's Oniguruma,
follows only whitespace, which never ends a match before a safe cut). No prefix space, no added tokens other than special ones, and
no normalizer other than NFC. With NFC (Qwen2) the text is normalized by the
tokenizer's own normalizer first, block by block, each block cut right before
an ASCII character: no ASCII character is the second half of a canonical
composition and every one has combining class 0, so nothing composes or
reorders across such a cut and NFC(a + b) == NFC(a) + NFC(b); the safe cuts are
then taken in the normalized text (NFC(NFC(x)) == NFC(x), so the tokenizer's
own NFC changes nothing more). tests/test_count_model.py checks every cut point
of both patterns in the real tokenizers and the NFC property for every code point.

SentencePiece-style BPE in Llama 2's layout (Llama 2, Mistral v1, Phi-3:
``Prepend("▁")`` + ``Replace(" ", "▁")`` normalizers, no pre-tokenizer) is
counted exactly too, by another rule: nothing pre-splits the text, so whether a
cut is safe depends on the vocabulary, and the tokenizer is accepted only when
no vocabulary token holds a "▁" after another character; then a cut right
before a space that follows a non-space is safe (proof at
:func:`_sentencepiece_why`), and every chunk after a source's first is encoded
without the leading "▁". Other SentencePiece layouts (a ``Metaspace``
pre-tokenizer, Gemma's) and vocabularies with "▁" inside tokens are refused.
Every refusal is one line saying why.

Encoding runs on threads: tiktoken's Rust core releases the GIL (tiktoken's
own ``encode_ordinary_batch`` relies on that), so threads use all cores with
one copy of the vocabulary and no copying of text between processes. A model
tokenizer (Hugging Face ``tokenizers``) runs on the same threads; its ``encode``
may hold the GIL, so expect about one core's speed there (about 1.3 MB/s with a
2000-token vocabulary on this busy 2-core box, 1 or 2 threads alike).
"""

from __future__ import annotations

import functools
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..data.corpus import BLOCK_BYTES, open_corpus  # one chunk is about one block of text
from ..errors import SupercalError
from ..io import atomic_file

FORMAT_VERSION = 1

# A safe cut lies right after a letter/digit that is followed by anything but a
# letter, mark, digit or apostrophe. "(?r)" searches from the end of the text.
_SAFE_CUT_PATTERN = r"(?r)[\p{L}\p{N}](?=[^\p{L}\p{M}\p{N}'])"


@dataclass
class Counts:
    """Token counts of a corpus, one int64 per token id, and where they came from."""

    counts: np.ndarray
    encoding: str  # tiktoken encoding name, or "model:<folder name>" (TextTokenizer.name)
    bytes: int
    tokens: int
    sources: list[str] = field(default_factory=list)
    invalid_bytes: int = 0
    model: str = ""  # absolute path of the model folder whose tokenizer counted ("" for a tiktoken encoding)
    tokenizer: str = ""  # the tokenizer by content (TextTokenizer.fingerprint; "" in files from before it)

    @property
    def distinct(self) -> int:
        return int(np.count_nonzero(self.counts))


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str):
    import regex  # compiled on first use: no regex import at package import time

    return regex.compile(pattern)


def _last_cut(pattern: str, text: str) -> int:
    m = _compiled(pattern).search(text)
    return m.end() if m else 0


def safe_cut(text: str) -> int:
    """The last position where ``text`` can be cut without changing its tokens (0: none)."""
    return _last_cut(_SAFE_CUT_PATTERN, text)


def iter_chunks(blocks: Iterable[str], cut: Callable[[str], int] | None = None) -> Iterator[str]:
    """Re-cut a stream of text blocks at safe places; the chunks join to the same text.

    The tail after the last safe cut of a block is carried into the next one, so
    a chunk is about one block long. Text with no safe cut at all (one endless
    word) is carried until one turns up: tiktoken would have to encode it whole anyway.
    """
    find = cut or safe_cut
    carry = ""
    for block in blocks:
        text = carry + block if carry else block
        at = find(text)
        if at == 0:
            carry = text
            continue
        yield text[:at]
        carry = text[at:]
    if carry:
        yield carry


# Split patterns (Hugging Face spelling) for which the safe cut is proven above and tested at every cut point.
SPLIT_PATTERNS = {
    "llama3": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    # tiktoken's own spellings, as transformers' tiktoken converter writes them into tokenizer.json
    "cl100k_base": (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"
                    r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s"),
    "o200k_base": (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                   r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
                   r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
}
_SENTENCEPIECE = ("a SentencePiece-style tokenizer (▁ for spaces) in a layout other than Llama 2's (Prepend + Replace "
                  "normalizers, no pre-tokenizer), whose cuts are not proven")
# Llama 2 / Mistral v1 / Phi-3 tokenizer.json: spaces become "▁" and one "▁" goes in front; nothing pre-splits.
_PREPEND = {"type": "Prepend", "prepend": "▁"}
_REPLACE = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
_SP_CUT_PATTERN = r"(?r)[^ ▁](?= )"  # right after a character that is not a space, before a space


def sp_safe_cut(text: str) -> int:
    """The last position where a Llama-2-style SentencePiece text can be cut (0: none): see _sentencepiece_why."""
    return _last_cut(_SP_CUT_PATTERN, text)


def _is_llama2_sentencepiece(data: dict) -> bool:
    norm = data.get("normalizer") or {}
    return (data.get("pre_tokenizer") is None and norm.get("type") == "Sequence"
            and norm.get("normalizers") == [_PREPEND, _REPLACE])


def _sentencepiece_why(data: dict) -> str | None:
    """Why a Llama-2-style SentencePiece BPE cannot be counted block by block, or None when it can.

    The proof: the text becomes "▁" + text with spaces as "▁", and BPE then merges adjacent symbols into
    vocabulary tokens, by rank, over the whole text (nothing pre-splits it). Cut right before a space that
    follows a character other than a space or "▁". A symbol that spanned the cut would be a vocabulary token
    holding some character c != "▁" followed by "▁"; when no token does (SentencePiece trained with
    split_by_whitespace, as Llama 2's, Mistral's and Phi-3's were, makes "▁" only a token's first characters),
    no merge ever joins the two sides, so merging the whole text merges each side on its own: the tokens are
    the left part's followed by the right part's, the right part normalized without the leading "▁" (that
    "▁" is only ever put in front of the whole text). Unknown characters become bytes (byte fallback) or
    <unk> each on their own; "▁" itself must be in the vocabulary, so no <unk> run crosses the cut.
    """
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return f"its model is {model.get('type')}{' with dropout' if model.get('dropout') else ''}, not BPE"
    vocab = model.get("vocab") or {}
    if "▁" not in vocab:
        return "its vocabulary has no ▁ token"
    for piece in vocab:
        for i in range(1, len(piece)):
            if piece[i] == "▁" and piece[i - 1] != "▁":
                return f"its vocabulary has a token with ▁ inside a word ({piece!r}), so merges can cross spaces"
    return None


def _why_not_exact(data: dict) -> str | None:
    """Why a tokenizer.json (as a dict) cannot be counted exactly block by block, or None when it can."""
    model, pre, norm = data.get("model") or {}, data.get("pre_tokenizer"), data.get("normalizer")
    text = json.dumps({"pre": pre, "norm": norm}, ensure_ascii=False)
    if (pre or {}).get("type") == "Metaspace" or "▁" in text:
        return f"it is {_SENTENCEPIECE}"
    if model.get("type") != "BPE":
        return f"its model is {model.get('type')}, not BPE"
    if norm is not None and norm.get("type") != "NFC":
        return f"it has a normalizer ({norm.get('type')}) other than NFC"
    if pre is None:
        return "it has no pre-tokenizer"
    if pre.get("type") == "ByteLevel":
        if not pre.get("use_regex", True):
            return "its ByteLevel pre-tokenizer splits nothing (use_regex false) and nothing splits before it"
    elif pre.get("type") == "Sequence" and [p.get("type") for p in pre.get("pretokenizers", [])] == ["Split", "ByteLevel"]:
        split, pre = pre["pretokenizers"]
        pattern = (split.get("pattern") or {}).get("Regex")
        if pattern not in SPLIT_PATTERNS.values():
            return (f"its Split pattern {pattern!r:.60} is not one whose cuts are proven "
                    f"({', '.join(SPLIT_PATTERNS)})")
        if split.get("behavior") != "Isolated" or split.get("invert"):
            return "its Split pre-tokenizer does not isolate the matches"
        # a ByteLevel that splits again (use_regex) splits each piece by the gpt2 pattern: the pieces on either
        # side of a safe cut are the same in the whole text and in the parts, so their sub-pieces are too
    else:
        kinds = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else []
        return f"its pre-tokenizer is {pre.get('type')}{kinds or ''}, not ByteLevel or Split + ByteLevel"
    if pre.get("add_prefix_space"):
        return "its ByteLevel pre-tokenizer adds a prefix space"
    return None


@dataclass
class _ModelCounting:
    """How to count in a model folder's tokenizer: the first chunk of a source and the others may be encoded
    differently (SentencePiece puts its "▁" in front of the whole text only), and cut by another rule."""

    tok: object  # TextTokenizer
    first: object  # tokenizers.Tokenizer for a source's first chunk
    rest: object  # ... and for the chunks after it
    normalize: Callable[[str], str] | None  # NFC applied to the stream first, if the tokenizer has it
    cut: Callable[[str], int]


def _model_encoder(model_dir: str | os.PathLike) -> _ModelCounting:
    """How to count exactly in a model folder's tokenizer; refuses (one line, why) when no cut is proven."""
    from tokenizers import Tokenizer

    from .tokenizer import from_model

    tok = from_model(model_dir)
    backend = getattr(tok.raw, "backend_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else None
    sentencepiece = data is not None and _is_llama2_sentencepiece(data)
    if data is None:
        why = "it has no fast (tokenizer.json) tokenizer"
    elif sentencepiece:
        why = _sentencepiece_why(data)
    else:
        why = _why_not_exact(data)
    if why is None and any(not t.get("special") for t in data.get("added_tokens", [])):
        why = "it has added tokens that are not special tokens"
    if why:
        raise SupercalError(f"cannot count exactly in the tokenizer of {model_dir}: {why}; supported: byte-level BPE "
                            "with the GPT-2, Llama-3, Qwen2 or tiktoken pre-tokenizer, and Llama-2-style SentencePiece "
                            "BPE; use --encoding instead")

    def private(spec: dict):  # a private copy: the settings below stay local
        t = Tokenizer.from_str(json.dumps(spec))
        t.encode_special_tokens = True  # "<|endoftext|>" in a corpus is text, as with tiktoken's encode_ordinary
        t.no_truncation()
        t.no_padding()
        return t

    first = private(data)
    if sentencepiece:
        return _ModelCounting(tok, first, private({**data, "normalizer": _REPLACE}), None, sp_safe_cut)
    normalize = first.normalizer.normalize_str if first.normalizer is not None else None
    return _ModelCounting(tok, first, first, normalize, safe_cut)


_LAST_ASCII = None


def normalized_blocks(blocks: Iterable[str], normalize: Callable[[str], str]) -> Iterator[str]:
    """``normalize`` (NFC) applied to a stream block by block: each block is cut right before its last ASCII
    character (see the module docstring) and the rest carried, so the pieces join to NFC of the whole text."""
    global _LAST_ASCII
    if _LAST_ASCII is None:
        import regex

        _LAST_ASCII = regex.compile(r"(?r)[\x00-\x7f]")
    carry = ""
    for block in blocks:
        text = carry + block if carry else block
        m = _LAST_ASCII.search(text)
        if m is None or m.start() == 0:
            carry = text
            continue
        yield normalize(text[:m.start()])
        carry = text[m.start():]
    if carry:
        yield normalize(carry)


def count_tokens(
    paths: list[str],
    *,
    encoding: str | None = None,
    model: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    block: int = BLOCK_BYTES,
) -> Counts:
    """Count the tokens of every source (plain, gz, bz2, xz or zip); sources are counted separately.

    In the tiktoken ``encoding`` (default o200k_base) or in the tokenizer of the
    ``model`` folder (byte-level BPE with a proven pre-tokenizer only); not both.

    ``progress(done, total)`` is called with file bytes read so far and the
    total size of all files on disk (compressed bytes for compressed files).
    """
    from .tokenizer import DEFAULT_ENCODING, get_encoding

    if model is not None and encoding is not None:
        raise SupercalError("give either --model or --encoding, not both")
    if not paths:
        raise SupercalError("give at least one corpus file")
    if workers is not None and workers < 1:
        raise SupercalError(f"--workers must be at least 1, got {workers}")
    corpora = [open_corpus(p) for p in paths]  # every path checked before any work
    normalize, cut = None, safe_cut
    if model is not None:
        mc = _model_encoder(model)
        tok, normalize, cut = mc.tok, mc.normalize, mc.cut
        name, n_vocab, model_path, fingerprint = tok.name, tok.n_vocab, str(Path(model).resolve()), tok.fingerprint

        def encode(chunk: str, first: bool) -> np.ndarray:
            backend = mc.first if first else mc.rest
            return np.asarray(backend.encode(chunk, add_special_tokens=False).ids, dtype=np.int64)
    else:
        name, model_path = encoding or DEFAULT_ENCODING, ""
        fingerprint = f"tiktoken:{name}"
        enc = get_encoding(name)
        n_vocab = enc.n_vocab

        def encode(chunk: str, first: bool) -> np.ndarray:
            # encode_to_numpy with no special tokens allowed or disallowed == encode_ordinary, as uint32.
            return enc.encode_to_numpy(chunk, disallowed_special=())
    if workers is None:  # the cores this process may use (fewer than os.cpu_count() under taskset or cgroups)
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    total_size = sum(c.size for c in corpora)

    def encode_chunk(chunk: str, first: bool) -> np.ndarray:
        return np.bincount(encode(chunk, first), minlength=n_vocab)  # (n_vocab,) int64

    counts = np.zeros(n_vocab, dtype=np.int64)
    done_size = 0
    # At most 2 chunks per thread in flight: memory is bounded by the block size, not the corpus.
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="count") as pool:
        try:
            for corpus in corpora:
                text = corpus.iter_text(block)
                chunks = iter_chunks(normalized_blocks(text, normalize) if normalize else text, cut)
                for k, chunk in enumerate(chunks):
                    pending.append(pool.submit(encode_chunk, chunk, k == 0))
                    while len(pending) > 2 * workers:
                        counts += pending.popleft().result()
                    if progress is not None:
                        progress(done_size + corpus.bytes_read, total_size)
                while pending:
                    counts += pending.popleft().result()
                if corpus.text_bytes == 0:
                    raise SupercalError(f"corpus {corpus.path} holds no text; give a file with text in it")
                done_size += corpus.size
                if progress is not None:
                    progress(done_size, total_size)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    return Counts(
        counts=counts,
        encoding=name,
        bytes=sum(c.text_bytes for c in corpora),
        tokens=int(counts.sum()),
        sources=[str(c.path) for c in corpora],
        invalid_bytes=sum(c.invalid_bytes for c in corpora),
        model=model_path,
        tokenizer=fingerprint,
    )


def save_counts(counts: Counts, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write counts.npz atomically: the counts and their metadata, nothing half-written."""
    with atomic_file(path, "wb", force=force) as f:
        np.savez(
            f,
            counts=counts.counts.astype(np.int64, copy=False),
            encoding=np.array(counts.encoding),
            bytes=np.int64(counts.bytes),
            tokens=np.int64(counts.tokens),
            sources=np.array(counts.sources, dtype=str),
            invalid_bytes=np.int64(counts.invalid_bytes),
            model=np.array(counts.model),
            tokenizer=np.array(counts.tokenizer),
            format_version=np.int64(FORMAT_VERSION),
        )


def load_counts(path: str | os.PathLike, *, tokenizer=None) -> Counts:
    """Read counts.npz; with ``tokenizer`` (a TextTokenizer), refuse counts made with another tokenizer
    (:func:`check_counts_tokenizer`)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise SupercalError(f"counts file {path} does not exist; make it with: supercal count CORPUS --out {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            c = Counts(
                counts=z["counts"].astype(np.int64, copy=False),
                encoding=str(z["encoding"]),
                bytes=int(z["bytes"]),
                tokens=int(z["tokens"]),
                sources=[str(s) for s in z["sources"]],
                invalid_bytes=int(z["invalid_bytes"]),
                model=str(z["model"]) if "model" in z.files else "",  # files from before model counting
                tokenizer=str(z["tokenizer"]) if "tokenizer" in z.files else "",
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        why = "it is empty" if path.stat().st_size == 0 else f"{type(e).__name__}: truncated or not an .npz"
        raise SupercalError(f"{path} is not a counts file from `supercal count` ({why}); make it again") from None
    if c.counts.ndim != 1:
        raise SupercalError(f"{path} is not a counts file from `supercal count` (counts are not one per token id)")
    if tokenizer is not None:
        check_counts_tokenizer(c, tokenizer, path)
    return c


# Fields a merge adds up; every other field names the tokenizer (or the format) and must agree.
_SUMMED = ("counts", "bytes", "tokens", "sources", "invalid_bytes")


def merge_counts(parts: list[Counts], *, names: list[str] | None = None) -> Counts:
    """Add up the counts of parts of a corpus (counted on several machines) into the counts of the whole.

    The result equals one ``count_tokens`` over all the parts' sources in this order: counts, bytes,
    tokens and invalid bytes are sums, sources are concatenated. Parts made with another encoding or
    tokenizer (any field not summed differs, or the vocabulary size) are refused; ``names`` (the files)
    only label the message.
    """
    import dataclasses

    if not parts:
        raise SupercalError("give at least one counts file to merge")
    names = names or [f"part {i + 1}" for i in range(len(parts))]
    first = parts[0]
    for name, part in zip(names[1:], parts[1:]):
        if part.counts.shape != first.counts.shape:
            raise SupercalError(f"{name} has {part.counts.size:,} token ids, {names[0]} {first.counts.size:,}: "
                                "they were counted with different tokenizers; count all parts with the same one")
        for f in dataclasses.fields(Counts):
            if f.name not in _SUMMED and getattr(part, f.name) != getattr(first, f.name):
                raise SupercalError(f"{name} was counted with {f.name} {getattr(part, f.name)!r}, {names[0]} with "
                                    f"{getattr(first, f.name)!r}; count all parts with the same tokenizer")
    total = np.zeros_like(first.counts)
    for part in parts:
        total += part.counts
    return dataclasses.replace(first, counts=total, bytes=sum(p.bytes for p in parts), tokens=int(total.sum()),
                               sources=[s for p in parts for s in p.sources],
                               invalid_bytes=sum(p.invalid_bytes for p in parts))


def check_counts_tokenizer(counts: Counts, tok, path: str | os.PathLike | None = None) -> None:
    """Refuse counts made with another tokenizer than ``tok``: by content when both know it (the
    fingerprint: a folder of the same name with another tokenizer is refused), else by name; and
    always when the vocabulary sizes differ."""
    what = str(path) if path else "the counts"
    if counts.tokenizer and tok.fingerprint:
        other = counts.tokenizer != tok.fingerprint
    else:
        other = counts.encoding != tok.name
    if other:
        same_name = " (same name, different tokenizer files)" if counts.encoding == tok.name else ""
        if counts.encoding.startswith("model:"):
            origin, option = f"the tokenizer of {counts.model or counts.encoding}", f"--model {counts.model or counts.encoding[6:]}"
        else:
            origin, option = counts.encoding, f"--encoding {counts.encoding}"
        raise SupercalError(f"{what} was counted with {origin}, not {tok.name}{same_name}; use {option} "
                            f"or count again with {tok.name}")
    if counts.counts.shape != (tok.n_vocab,):
        raise SupercalError(f"{what} holds {counts.counts.size:,} token ids, {tok.name} has {tok.n_vocab:,}: "
                            "another tokenizer; count again with this one")


def counts_tokenizer(counts: Counts):
    """The TextTokenizer the counts were made with: the tiktoken encoding, or the model folder they name
    (checked by content: a folder whose tokenizer changed since is refused)."""
    from .tokenizer import from_encoding, from_model

    if not counts.encoding.startswith("model:"):
        return from_encoding(counts.encoding)
    if not counts.model or not Path(counts.model).is_dir():
        raise SupercalError(f"the counts were made with the tokenizer of {counts.model or counts.encoding}, "
                            "which is not there; give --model DIR with that tokenizer")
    tok = from_model(counts.model)
    check_counts_tokenizer(counts, tok)
    return tok
