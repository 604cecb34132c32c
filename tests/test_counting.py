"""`supercal count`: exact counts (cuts only where the pre-tokenizer splits), streaming, formats, bad input."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import lzma
import random
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.text.counting import Counts, count_tokens, iter_chunks, load_counts, safe_cut, save_counts
from supercal_mlx.errors import SupercalError
from supercal_mlx.text.tokenizer import from_encoding, get_encoding

ENCODINGS = ("o200k_base", "cl100k_base")

# Pieces that stress the pre-tokenizers: whitespace runs, newlines, contractions, digit runs, marks,
# case changes, CJK, emoji, special-token text, wiki markup, HTML entities, the o200k "/"-after-newline rule.
ATOMS = [
    "the", "The", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \n ", "'s", "'S", "'ll", "'", "\u2019", "don't", "IT'S",
    "123", "4567890", "3rd", "\u00bd", "\u00b2", "Z\u00fcrich", "na\u00efve", "e\u0301", "\u6771\u4eac", "\u3002", "\u3001",
    "\U0001f600", "\U0001f44d\U0001f3fd", "<|endoftext|>", "<|endofprompt|>", "[[", "]]", "{{", "}}", "&amp;", "&nbsp;",
    "''", "'''", "==", "/", "//", "./", ".\n/", "-", "\u2014", "camelCase", "HTTPServer", "\u041c\u043e\u0441\u043a\u0432\u0430",
    "\u0395\u03bb\u03bb\u03ac\u03b4\u03b1", "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0939\u093f\u0928\u094d\u0926\u0940", "\u01c5",
    "\u02b0", "\u00a0", "\u3000", "\x00", "\ufffd", "x", "A", "a", ".", ",", "?!", "(", ")", '"', ":",
]
_RULE = regex.compile(r"[\p{L}\p{N}][^\p{L}\p{M}\p{N}']")  # the documented safe-cut condition around a cut


def tricky_text(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(ATOMS) for _ in range(n))


def load_make_corpus():
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_corpus.py"
    spec = importlib.util.spec_from_file_location("make_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference(text: str, encoding: str) -> np.ndarray:
    """What the counts must equal: Counter over one-shot encode_ordinary of the whole text."""
    enc = get_encoding(encoding)
    out = np.zeros(enc.n_vocab, dtype=np.int64)
    for token, c in Counter(enc.encode_ordinary(text)).items():
        out[token] = c
    return out


@pytest.fixture(scope="module")
def corpus_text():
    """Wiki-like generated text with tricky pieces mixed in (about 120 kB)."""
    gen = load_make_corpus()
    text = "".join(gen.generate(100_000, seed=3))
    return text + tricky_text(7, 3000) + " trailing   \n\n"


def _cuts_checked(split, seeds: int) -> int:
    """Assert split(left) + split(right) == split(text) at every safe cut of tricky texts; return how many."""
    checked = 0
    for seed in range(seeds):
        text = tricky_text(seed, 1 + seed % 60)
        whole = split(text)
        for s in range(1, len(text)):
            if _RULE.match(text, s - 1):
                checked += 1
                assert split(text[:s]) + split(text[s:]) == whole, (text[:s], text[s:])
    return checked


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_safe_cut_keeps_the_tokens(encoding):
    assert _cuts_checked(get_encoding(encoding).encode_ordinary, 150) > 1000


def test_safe_cuts_split_the_gpt2_family_pattern_too():
    """gpt2/r50k/p50k cannot be loaded offline; check their pre-tokenizer pattern itself."""
    from tiktoken_ext.openai_public import r50k_pat_str

    assert _cuts_checked(regex.compile(r50k_pat_str).findall, 100) > 500


def test_safe_cut_is_the_last_position_the_rule_allows():
    text = tricky_text(1, 400)
    allowed = [s for s in range(1, len(text)) if _RULE.match(text, s - 1)]
    assert safe_cut(text) == allowed[-1]
    assert safe_cut("   ") == 0 and safe_cut("word") == 0 and safe_cut("don't") == 0 and safe_cut("don't go") == 5
    # a cut that the rule refuses really can change the tokens
    enc = get_encoding("o200k_base")
    assert enc.encode_ordinary("a \n") + enc.encode_ordinary("\nb") != enc.encode_ordinary("a \n\nb")


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_chunks_join_and_encode_like_the_whole(encoding, block):
    enc = get_encoding(encoding)
    text = tricky_text(block, 1500)
    blocks = [text[i : i + block] for i in range(0, len(text), block)]
    chunks = list(iter_chunks(blocks))
    assert "".join(chunks) == text
    assert [t for c in chunks for t in enc.encode_ordinary(c)] == enc.encode_ordinary(text)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_count_equals_counter_of_whole_text(tmp_path, corpus_text, encoding):
    path = tmp_path / "c.txt"
    path.write_text(corpus_text, encoding="utf-8")
    want = reference(corpus_text, encoding)
    seen = []
    one = count_tokens([str(path)], encoding=encoding, workers=1, block=4096, progress=lambda d, t: seen.append((d, t)))
    two = count_tokens([str(path)], encoding=encoding, workers=2, block=997)
    assert np.array_equal(one.counts, want) and np.array_equal(two.counts, want)
    assert one.tokens == int(want.sum()) and one.bytes == len(corpus_text.encode()) and one.invalid_bytes == 0
    assert one.encoding == encoding and one.sources == [str(path)]
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    assert "<|endoftext|>" in corpus_text  # special-token text was counted as ordinary text


def test_every_compressed_format_counts_the_same(tmp_path, corpus_text):
    data = corpus_text.encode("utf-8")
    paths = {"plain": tmp_path / "c.txt", "gz": tmp_path / "c.gz", "bz2": tmp_path / "c.bz2", "xz": tmp_path / "c.xz",
             "zip": tmp_path / "c.zip", "noext": tmp_path / "enwik"}
    paths["plain"].write_bytes(data)
    paths["gz"].write_bytes(gzip.compress(data))
    paths["bz2"].write_bytes(bz2.compress(data))
    paths["xz"].write_bytes(lzma.compress(data))
    with zipfile.ZipFile(paths["zip"], "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik", data)
    paths["noext"].write_bytes(gzip.compress(data))  # recognised by magic bytes, not the name
    want = reference(corpus_text, "o200k_base")
    for name, p in paths.items():
        got = count_tokens([str(p)], workers=2, block=8192)
        assert np.array_equal(got.counts, want), name
        assert got.bytes == len(data), name


def test_several_files_are_counted_one_by_one(tmp_path):
    a, b = "alpha beta's 12345\n", "<|endoftext|> gamma\u00e9 \U0001f600"
    (tmp_path / "a.txt").write_text(a, encoding="utf-8")
    (tmp_path / "b.txt").write_text(b, encoding="utf-8")
    got = count_tokens([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], workers=2)
    assert np.array_equal(got.counts, reference(a, "o200k_base") + reference(b, "o200k_base"))
    assert got.sources == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    enc = get_encoding("o200k_base")
    assert got.counts[enc.encode_single_token("<|endoftext|>")] == 0  # never the special token


def test_invalid_utf8_is_replaced_and_reported(tmp_path):
    data = b"good text \xff\xfe more words\n" * 50 + b"split \xe2\x82" + b" end \xc3"
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    got = count_tokens([str(path)], workers=2, block=5)  # tiny blocks split the sequences too
    assert np.array_equal(got.counts, reference(data.decode("utf-8", errors="replace"), "o200k_base"))
    assert got.invalid_bytes == 2 * 50 + 2 + 1


def test_npz_reload_equal_and_encoding_checked(tmp_path, corpus_text):
    (tmp_path / "c.txt").write_text(corpus_text, encoding="utf-8")
    counts = count_tokens([str(tmp_path / "c.txt")], encoding="cl100k_base")
    out = tmp_path / "counts.npz"
    save_counts(counts, out)
    back = load_counts(out, tokenizer=from_encoding("cl100k_base"))
    assert back.counts.dtype == np.int64 and np.array_equal(back.counts, counts.counts)
    assert (back.encoding, back.bytes, back.tokens, back.sources, back.invalid_bytes) == (
        counts.encoding, counts.bytes, counts.tokens, counts.sources, counts.invalid_bytes)
    with pytest.raises(SupercalError, match="counted with cl100k_base"):
        load_counts(out, tokenizer=from_encoding("o200k_base"))
    with pytest.raises(SupercalError, match="already exists"):
        save_counts(counts, out)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SupercalError, match="not a counts file"):
        load_counts(tmp_path / "junk.npz")
    with pytest.raises(SupercalError, match="does not exist"):
        load_counts(tmp_path / "none.npz")


def test_cli_count_and_tokens(tmp_path, corpus_text):
    (tmp_path / "c.txt").write_text(corpus_text, encoding="utf-8")
    (tmp_path / "c.gz").write_bytes(gzip.compress(b"supercalifragilisticexpialidocious " * 3))
    out = tmp_path / "counts.npz"
    runner = CliRunner()
    res = runner.invoke(cli, ["count", str(tmp_path / "c.txt"), str(tmp_path / "c.gz"), "--out", str(out),
                              "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    want = reference(corpus_text, "o200k_base") + reference("supercalifragilisticexpialidocious " * 3, "o200k_base")
    assert summary["tokens"] == int(want.sum()) and summary["distinct_tokens"] == int(np.count_nonzero(want))
    assert np.array_equal(load_counts(out).counts, want)
    res = runner.invoke(cli, ["tokens", "supercalifragilisticexpialidocious", "--counts", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["tokens"]
    assert len(rows) == 10 and [t["count"] for t in rows] == [int(want[t["id"]]) for t in rows]
    assert rows[0]["count"] >= 1


def test_cli_count_bad_input(tmp_path):
    runner = CliRunner()
    good = tmp_path / "good.txt"
    good.write_text("some text\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty.gz").write_bytes(gzip.compress(b""))
    out = tmp_path / "out.npz"
    cases = [
        ([str(tmp_path / "missing.txt")], "does not exist"),
        ([str(tmp_path)], "is a folder"),
        ([str(tmp_path / "empty.txt")], "is empty"),
        ([str(tmp_path / "empty.gz")], "holds no text"),
        ([str(good), "--encoding", "o300k"], "known encodings: .*cl100k_base.*o200k_base"),
        ([str(good), "--workers", "0"], "at least 1"),
    ]
    for args, message in cases:
        res = runner.invoke(cli, ["count", *args, "--out", str(out)])
        assert res.exit_code != 0, args
        line = res.output.strip().splitlines()[-1]
        assert line.startswith("Error:") and regex.search(message, line), (args, res.output)
        assert "Traceback" not in res.output and not out.exists()
    out.write_bytes(b"keep me")
    res = runner.invoke(cli, ["count", str(good), "--out", str(out)])
    assert res.exit_code == 1 and "--force" in res.output and out.read_bytes() == b"keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_counts_dataclass_distinct():
    c = Counts(counts=np.array([0, 2, 0, 5], dtype=np.int64), encoding="o200k_base", bytes=9, tokens=7)
    assert c.distinct == 2 and c.sources == [] and c.invalid_bytes == 0


def test_cli_count_merge_equals_one_count_of_all_parts(tmp_path, corpus_text):
    parts = [corpus_text[: len(corpus_text) // 3], corpus_text[len(corpus_text) // 3:], "supercal\xe9 " * 5]
    paths = []
    for i, text in enumerate(parts):
        paths.append(tmp_path / f"p{i}.txt")
        paths[-1].write_text(text, encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")  # invalid UTF-8 is summed too
    paths.append(tmp_path / "bad.txt")
    runner = CliRunner()
    shards = []
    for i, group in enumerate([paths[:1], paths[1:3], paths[3:]]):  # three "machines"
        shards.append(str(tmp_path / f"s{i}.npz"))
        res = runner.invoke(cli, ["count", *map(str, group), "--out", shards[-1], "--workers", "1"])
        assert res.exit_code == 0, res.output
    whole = count_tokens([str(p) for p in paths], workers=2)
    res = runner.invoke(cli, ["count", "--merge", *shards, "--out", str(tmp_path / "all.npz"), "--json"])
    assert res.exit_code == 0, res.output
    merged = load_counts(tmp_path / "all.npz")
    assert np.array_equal(merged.counts, whole.counts) and merged.counts.dtype == np.int64
    assert (merged.encoding, merged.bytes, merged.tokens, merged.sources, merged.invalid_bytes, merged.model) == (
        whole.encoding, whole.bytes, whole.tokens, whole.sources, whole.invalid_bytes, whole.model)
    assert whole.invalid_bytes == 1 and json.loads(res.output)["tokens"] == whole.tokens
    # another encoding, or another tokenizer of the same vocabulary size: refused, nothing written
    save_counts(count_tokens([str(paths[2])], encoding="cl100k_base"), tmp_path / "cl.npz")
    other = load_counts(shards[0])
    other.model, other.encoding = "/elsewhere/model", "model:model"
    save_counts(other, tmp_path / "other.npz")
    for bad, message in (("cl.npz", "token ids"), ("other.npz", "encoding 'model:model'")):
        res = runner.invoke(cli, ["count", "--merge", shards[0], str(tmp_path / bad), "--out", str(tmp_path / "x.npz")])
        assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "x.npz").exists()
    res = runner.invoke(cli, ["count", "--merge", shards[0], "--encoding", "cl100k_base", "--out", str(tmp_path / "x.npz")])
    assert res.exit_code != 0 and "do not apply" in res.output
