"""`count --model` / `tokenstein --model`: exact counts in a model folder's own byte-level BPE, tokensteins in its tokens."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import regex
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.text.counting import count_tokens, counts_tokenizer, iter_chunks, load_counts, save_counts
from supercal_mlx.errors import SupercalError
from supercal_mlx.text.tokenizer import from_encoding, from_model
from supercal_mlx.text.tokenstein import make_tokenstein
from test_counting import tricky_text

WORD = "supercalifragilisticexpialidocious"
_RULE = regex.compile(r"[\p{L}\p{N}][^\p{L}\p{M}\p{N}']")


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer_dir):
    """A folder with the tiny model's tokenizer files, all that counting and tokensteins read from a model folder.

    Not tiny_model_dir: making that seeds mlx's global RNG, and test_evaluate's LoRA init depends on when that happens.
    """
    return tiny_tokenizer_dir


def plain_text_encoder(model_dir):
    """The model's tokenizer on the whole text, special-token text as plain text (as tiktoken's encode_ordinary)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    backend.encode_special_tokens = True
    return lambda text: backend.encode(text, add_special_tokens=False).ids


def reference(ids: list[int], n_vocab: int) -> np.ndarray:
    out = np.zeros(n_vocab, dtype=np.int64)
    for token, c in Counter(ids).items():
        out[token] = c
    return out


def test_every_safe_cut_keeps_the_model_tokens(model_dir):
    encode = plain_text_encoder(model_dir)
    checked = 0
    for seed in range(100):
        text = tricky_text(seed, 1 + seed % 60)
        whole = encode(text)
        for s in range(1, len(text)):
            if _RULE.match(text, s - 1):
                checked += 1
                assert encode(text[:s]) + encode(text[s:]) == whole, (text[:s], text[s:])
    assert checked > 500


@pytest.mark.parametrize("block", [1, 3, 7, 64, 500, 4096, 1 << 20])
def test_model_counts_equal_counter_of_whole_text(tmp_path, model_dir, block):
    tok = from_model(model_dir)
    plain = tricky_text(11, 2000).replace("<|endoftext|>", "<|end|>")  # no special-token text: tok.encode is the reference
    special = tricky_text(12, 800)
    assert "<|endoftext|>" in special
    (tmp_path / "a.txt").write_text(plain, encoding="utf-8")
    (tmp_path / "b.txt").write_text(special, encoding="utf-8")
    got = count_tokens([str(tmp_path / "a.txt")], model=model_dir, workers=2, block=block)
    assert np.array_equal(got.counts, reference(tok.encode(plain), tok.n_vocab))
    assert got.encoding == tok.name == f"model:{model_dir.name}" and got.model == str(model_dir.resolve())
    both = count_tokens([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], model=model_dir, workers=2, block=block)
    want = got.counts + reference(plain_text_encoder(model_dir)(special), tok.n_vocab)
    assert np.array_equal(both.counts, want)
    assert np.array_equal(reference(tok.encode(special), tok.n_vocab), want - got.counts)  # TextTokenizer agrees
    eot = tok.raw.convert_tokens_to_ids("<|endoftext|>")
    assert both.counts[eot] == 0  # special-token text counts as text, never the special id


def test_model_chunks_encode_like_the_whole(model_dir):
    encode = plain_text_encoder(model_dir)
    text = tricky_text(5, 1500)
    for block in (1, 5, 50):
        chunks = list(iter_chunks(text[i : i + block] for i in range(0, len(text), block)))
        assert [t for c in chunks for t in encode(c)] == encode(text)


def test_model_counts_reload_and_rebuild_the_tokenizer(tmp_path, model_dir):
    (tmp_path / "c.txt").write_text(f"The {WORD} song. " * 20, encoding="utf-8")
    counts = count_tokens([str(tmp_path / "c.txt")], model=model_dir)
    save_counts(counts, tmp_path / "counts.npz")
    back = load_counts(tmp_path / "counts.npz", tokenizer=from_model(model_dir))
    assert np.array_equal(back.counts, counts.counts) and back.model == counts.model
    assert counts_tokenizer(back).encode(WORD) == from_model(model_dir).encode(WORD)
    with pytest.raises(SupercalError, match=f"--model {re.escape(counts.model)}"):
        load_counts(tmp_path / "counts.npz", tokenizer=from_encoding("o200k_base"))
    with pytest.raises(SupercalError, match="either --model or --encoding"):
        count_tokens([str(tmp_path / "c.txt")], model=model_dir, encoding="o200k_base")


def test_refuses_a_tokenizer_that_is_not_byte_level(tmp_path, model_dir):
    from tokenizers import Tokenizer, pre_tokenizers

    folder = tmp_path / "ws-model"
    shutil.copytree(model_dir, folder)
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(folder / "tokenizer.json"))
    (tmp_path / "c.txt").write_text("some text\n")
    with pytest.raises(SupercalError, match="pre-tokenizer is Whitespace, not ByteLevel"):
        count_tokens([str(tmp_path / "c.txt")], model=folder)


def fake_model_counts(model_dir):
    """Zipf-like counts over the model's vocabulary, as if counted with it."""
    tok = from_model(model_dir)
    counts = (1e6 / np.random.default_rng(0).permutation(np.arange(1, tok.n_vocab + 1))).astype(np.int64)
    from supercal_mlx.text.counting import Counts

    return Counts(counts=counts, encoding=tok.name, bytes=10**6, tokens=int(counts.sum()), sources=["fake"],
                  model=str(model_dir.resolve()))


def test_tokenstein_in_model_tokens(model_dir):
    tok = from_model(model_dir)
    counts = fake_model_counts(model_dir)
    word_ids = tok.encode(WORD)
    results = make_tokenstein(WORD, counts, deviation=0.5, seed=0, n=2)
    assert len({t.word for t in results}) == 2
    for t in results:
        assert [r.word_id for r in t.rows] == word_ids
        assert tok.encode(t.word) == [r.id for r in t.rows]  # re-encodes to exactly its pieces in the model's tokens
        assert re.fullmatch("[a-z]+", t.word) and not {r.id for r in t.rows} & set(word_ids)
        assert all(r.count == counts.counts[r.id] and r.piece == tok.piece(r.id) for r in t.rows)
    assert make_tokenstein(WORD, counts, tokenizer=tok, deviation=0.5, seed=0, n=2)[1].word == results[1].word


def test_cli_count_tokens_tokenstein_with_model(tmp_path, model_dir):
    (tmp_path / "c.txt").write_text(f"{WORD} is a song; the cats play in the garden.\n" * 30, encoding="utf-8")
    out = tmp_path / "counts.npz"
    runner = CliRunner()
    res = runner.invoke(cli, ["count", str(tmp_path / "c.txt"), "--model", str(model_dir), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["encoding"] == f"model:{model_dir.name}"
    counts = load_counts(out)
    res = runner.invoke(cli, ["tokens", WORD, "--model", str(model_dir), "--counts", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert all(r["count"] == counts.counts[r["id"]] >= 30 for r in json.loads(res.output)["tokens"])
    want = make_tokenstein(WORD, counts, deviation=0.9, seed=1)[0].word
    for extra in ([], ["--model", str(model_dir)]):
        res = runner.invoke(cli, ["tokenstein", WORD, "--counts", str(out), "--deviation", "0.9", "--seed", "1", "--json", *extra])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["tokensteins"][0]["word"] == want
    cases = [
        (["tokenstein", WORD, "--counts", str(out), "--encoding", "o200k_base"], f"use --model {model_dir.resolve()}"),
        (["tokenstein", WORD, "--counts", str(out), "--encoding", "o200k_base", "--model", str(model_dir)],
         "either --model or --encoding"),
        (["count", str(tmp_path / "c.txt"), "--out", str(tmp_path / "x.npz"), "--encoding", "o200k_base",
          "--model", str(model_dir)], "either --model or --encoding"),
    ]
    # counts whose model folder is gone: say so, ask for --model
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved / model_dir.name)
    gone = load_counts(out)
    gone.model = str(tmp_path / "gone" / model_dir.name)
    save_counts(gone, tmp_path / "gone.npz")
    cases.append((["tokenstein", WORD, "--counts", str(tmp_path / "gone.npz")], "not there; give --model DIR"))
    for args, msg in cases:
        res = runner.invoke(cli, args)
        assert res.exit_code == 1 and "Traceback" not in res.output, (args, res.output)
        assert res.output.strip().startswith("Error:") and msg in res.output, (args, res.output)
    res = runner.invoke(cli, ["tokenstein", WORD, "--counts", str(tmp_path / "gone.npz"), "--deviation", "0.9", "--seed", "1",
                              "--model", str(moved / model_dir.name), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["tokensteins"][0]["word"] == want, res.output
