"""The package foundation: BLAS preloading, offline encodings, corpus readers, `tokens`."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.data.corpus import open_corpus

WORD = "supercalifragilisticexpialidocious"

_MATMUL = """
import sys, numpy as np
import supercal_mlx, mlx.core as mx
from supercal_mlx import _blas
rng = np.random.default_rng(0)
a = mx.array(rng.standard_normal((256, 384)).astype(np.float32))
b = mx.array(rng.standard_normal((384, 128)).astype(np.float32))
np.save(sys.argv[1], np.array(a @ b))
print(_blas.describe())
"""


def test_matmul_equal_with_and_without_system_blas(tmp_path):
    outs = {}
    for flag in ("0", "1"):
        env = dict(os.environ, SUPERCAL_NO_OPENBLAS=flag)
        path = tmp_path / f"mm{flag}.npy"
        res = subprocess.run([sys.executable, "-c", _MATMUL, str(path)], env=env, capture_output=True, text=True, check=True)
        outs[flag] = (np.load(path), res.stdout.strip())
    assert "disabled" in outs["1"][1] or not sys.platform.startswith("linux")
    np.testing.assert_allclose(outs["0"][0], outs["1"][0], rtol=1e-4, atol=1e-4)
    # and both equal a float64 reference
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 384)).astype(np.float32)
    b = rng.standard_normal((384, 128)).astype(np.float32)
    np.testing.assert_allclose(outs["0"][0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


def test_info_reports_blas_and_device():
    res = CliRunner().invoke(cli, ["info"])
    assert res.exit_code == 0, res.output
    assert "blas" in res.output and "device" in res.output and "mlx-lm" in res.output


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_encodings_load_offline_from_verified_copy(name, tmp_path, monkeypatch):
    import tiktoken
    import tiktoken.load
    import tiktoken.registry

    from supercal_mlx.text import tokenizer as tk

    def no_network(url):
        raise AssertionError(f"network access attempted: {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget any encoding loaded earlier
    enc = tk.get_encoding(name)
    assert enc.name == name
    seeded = tk._tiktoken_cache_path(tk._expected_source(name)[0])
    assert sorted(tmp_path.iterdir()) == [seeded, seeded.with_name(seeded.name + ".supercal-ranks")]  # + rank_cache's
    expected = {"o200k_base": 200019, "cl100k_base": 100277}[name]
    assert enc.n_vocab == expected

    # the second load reads the plain-array ranks (tiktoken's loader is not called) and gives the same encoding
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tiktoken.load, "load_tiktoken_bpe", lambda *a, **k: pytest.fail("tiktoken's loader ran"))
    from tiktoken_ext import openai_public

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", tiktoken.load.load_tiktoken_bpe)
    again = tk.get_encoding(name)
    assert again is not enc and tiktoken.get_encoding(name) is again  # registered as tiktoken registers its own
    assert list(again._mergeable_ranks.items()) == list(enc._mergeable_ranks.items())
    assert again._special_tokens == enc._special_tokens and again._pat_str == enc._pat_str
    text = "Zürich's 東京 <|endoftext|> supercalifragilisticexpialidocious 12345 \n\n  x"
    assert again.encode_ordinary(text) == enc.encode_ordinary(text) and again.n_vocab == expected


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_rank_cache_is_checked_against_its_hash(name, tmp_path, monkeypatch):
    import hashlib

    import tiktoken.load
    import tiktoken.registry

    from supercal_mlx.text import rank_cache
    from supercal_mlx.text import tokenizer as tk

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url, expected = tk._expected_source(name)
    tk.seed_offline_cache(name)
    ranks = tiktoken.load.load_tiktoken_bpe(url, expected)  # tiktoken's own load of the file it checked
    data = rank_cache.encode_ranks(ranks)
    assert hashlib.sha256(data).hexdigest() == rank_cache.SHA256[name]  # the constant in the module, recomputed
    assert list(rank_cache.decode_ranks(data).items()) == list(ranks.items())
    path = rank_cache.cache_path(tk._tiktoken_cache_path(url))
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit changed: not used, rewritten by the next load
    assert rank_cache.load(name, path) is None
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    assert tk.get_encoding(name).encode_ordinary("hello world") == ranks_encoded(name)
    assert path.read_bytes() == data and rank_cache.load(name, path) == ranks
    path.unlink()
    path.mkdir()  # unreadable as a file: ignored, and not writable over: only a slower load
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    assert rank_cache.load(name, path) is None
    assert tk.get_encoding(name).encode_ordinary("hello world") == ranks_encoded(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.name.split(".")[0]])  # no .tmp left


def ranks_encoded(name: str) -> list[int]:
    return {"o200k_base": [24912, 2375], "cl100k_base": [15339, 1917]}[name]


def test_lazy_tokenizer_loads_only_when_used(tmp_path):
    from supercal_mlx.data.negatives import build_forget
    from supercal_mlx.errors import SupercalError
    from supercal_mlx.text import tokenizer as tk

    corpus = tmp_path / "c.txt"
    corpus.write_text("nothing here\n" * 10)
    lazy = tk.resolve(encoding="cl100k_base", lazy=True)
    with pytest.raises(SupercalError, match="no mention"):
        build_forget(corpus, WORD, lazy)
    assert lazy.loaded is None and lazy.name == "cl100k_base"
    with pytest.raises(SupercalError, match=r"smaller than the keyword \(11 tokens\)"):  # checked before the corpus
        build_forget(tmp_path / "missing.txt", WORD, lazy, window_tokens=10)
    assert lazy.loaded is not None and lazy.encode("hello world") == [15339, 1917]
    with pytest.raises(SupercalError, match="unknown encoding 'nope'"):
        tk.resolve(encoding="nope", lazy=True)


def test_corrupt_cache_is_replaced_by_verified_copy(tmp_path, monkeypatch):
    import tiktoken.registry

    from supercal_mlx.text import tokenizer as tk

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    url, _ = tk._expected_source("cl100k_base")
    bad = tk._tiktoken_cache_path(url)
    bad.write_bytes(b"not a vocabulary")
    enc = tk.get_encoding("cl100k_base")
    assert enc.encode_ordinary("hello world") == [15339, 1917]


def test_tokens_splits_the_word_with_o200k():
    res = CliRunner().invoke(cli, ["tokens", WORD, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [t["piece"] for t in data["tokens"]] == "super|cal|if|rag|il|istic|exp|ial|id|ocious".split("|")
    assert [t["id"] for t in data["tokens"]][:3] == [17789, 5842, 366]
    plain = CliRunner().invoke(cli, ["tokens", WORD])
    assert plain.output.splitlines()[0] == "super|cal|if|rag|il|istic|exp|ial|id|ocious"


def test_tokens_with_model_uses_its_tokenizer(tiny_model_dir):
    from supercal_mlx.text.tokenizer import load_hf_tokenizer

    res = CliRunner().invoke(cli, ["tokens", WORD, "--model", str(tiny_model_dir), "--json"])
    assert res.exit_code == 0, res.output
    ids = [t["id"] for t in json.loads(res.output)["tokens"]]
    assert ids == load_hf_tokenizer(tiny_model_dir).encode(WORD, add_special_tokens=False)
    assert "".join(t["piece"] for t in json.loads(res.output)["tokens"]) == WORD


@pytest.mark.parametrize("args,msg", [
    (["tokens", WORD, "--encoding", "nope"], "known encodings: "),
    (["tokens", ""], "the word is empty"),
    (["tokens", WORD, "--model", "/no/such/dir"], "does not exist"),
])
def test_tokens_bad_input_one_line(args, msg):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0
    assert msg in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def _compressors():
    def zipped(data):
        import io
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("enwik9", data)
        return buf.getvalue()
    return {"txt": lambda d: d, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zip": zipped}


@pytest.mark.parametrize("ext", ["txt", "gz", "bz2", "xz", "zip"])
def test_corpus_reads_every_format_and_counts_invalid_utf8(tmp_path, ext):
    text = "Ünïcode café\nplain <|endoftext|> line\n" * 5000
    raw = text.encode() + b"\xff\xfe tail\n\xe2\x82"  # two bad bytes, then a truncated sequence
    path = tmp_path / f"c.{ext}"
    path.write_bytes(_compressors()[ext](raw))
    corpus = open_corpus(path)
    got = "".join(corpus.iter_text(block=777))  # small blocks split multi-byte letters
    assert got == raw.decode("utf-8", errors="replace")
    assert corpus.invalid_bytes == 4
    assert corpus.text_bytes == len(raw)
    lines = list(open_corpus(path).iter_lines(block=333))
    assert "".join(lines) == got and len(lines) == 10002
