"""`supercal tokenstein`: one piece per token, counts within the deviation or flagged, re-encodes, seeded."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.text.counting import Counts, save_counts
from supercal_mlx.errors import SupercalError
from supercal_mlx.text.tokenizer import from_encoding, get_encoding
from supercal_mlx.text.tokenstein import _letter_tokens, _search, make_tokenstein

WORD = "supercalifragilisticexpialidocious"


def fake_counts(encoding: str = "o200k_base", seed: int = 0) -> Counts:
    """Zipf-like counts over the whole vocabulary (no corpus needed)."""
    enc = get_encoding(encoding)
    rng = np.random.default_rng(seed)
    counts = (1e7 / rng.permutation(np.arange(1, enc.n_vocab + 1))).astype(np.int64)  # (n_vocab,)
    return Counts(counts=counts, encoding=encoding, bytes=10**9, tokens=int(counts.sum()), sources=["fake"])


@pytest.fixture(scope="module")
def counts():
    return fake_counts()


def check(t, word: str, counts: Counts, deviation: float) -> None:
    enc = get_encoding(counts.encoding)
    word_ids = enc.encode_ordinary(word)
    assert [r.word_id for r in t.rows] == word_ids  # one piece per word token, none dropped
    assert t.word == "".join(r.piece for r in t.rows)
    assert enc.encode_ordinary(t.word) == [r.id for r in t.rows]  # re-encodes to exactly the pieces
    assert len({r.id for r in t.rows}) == len(t.rows) and not {r.id for r in t.rows} & set(word_ids)
    for r in t.rows:
        assert re.fullmatch("[a-z]+", r.piece)
        assert r.count == counts.counts[r.id] and r.word_count == counts.counts[r.word_id]
        assert r.flagged or abs(r.count - r.word_count) <= deviation * r.word_count


def test_tokenstein_properties(counts):
    results = make_tokenstein(WORD, counts, deviation=0.04, seed=1, n=3)
    assert len(results) == 3 and len({t.word for t in results}) == 3
    for t in results:
        check(t, WORD, counts, 0.04)
        assert not t.flagged


def test_same_seed_same_word_other_seed_differs(counts):
    a = make_tokenstein(WORD, counts, seed=5)[0].word
    assert make_tokenstein(WORD, counts, seed=5)[0].word == a
    assert len({make_tokenstein(WORD, counts, seed=s)[0].word for s in range(6)}) > 1


def test_no_candidate_within_deviation_takes_nearest_and_flags():
    enc = get_encoding("o200k_base")
    c = fake_counts()
    letters = _letter_tokens(from_encoding("o200k_base"))
    word_ids = enc.encode_ordinary("hello world")  # two tokens
    c.counts[letters] = np.arange(letters.size) * 1000  # letter tokens: 0, 1000, 2000, ...
    c.counts[word_ids[0]] = 500_500  # halfway between two letter-token counts: nothing within 0.05%
    c.counts[word_ids[1]] = 7000
    c.counts[letters[3000:3050]] = 7000  # plenty within the deviation for the second token
    t = make_tokenstein("hello world", c, deviation=0.0005, seed=0)[0]
    check(t, "hello world", c, 0.0005)
    assert [r.flagged for r in t.rows] == [True, False]
    assert abs(t.rows[0].count - 500_500) == 500  # one of the two nearest counts
    assert t.rows[1].count == 7000


def test_search_skips_a_choice_that_merges():
    enc = get_encoding("o200k_base")
    ids = {p: enc.encode_single_token(p) for p in ("in", "g", "x", "b")}
    assert enc.encode_ordinary("ing") != [ids["in"], ids["g"]]  # "in" + "g" would become another token
    orders = [(np.array([ids["in"]]), 1), (np.array([ids["g"], ids["x"], ids["b"]]), 3)]
    chosen = _search(from_encoding("o200k_base"), [0, 0], orders, set())
    assert chosen == [ids["in"], ids["b"]]  # "ing" and "inx" are single tokens: skipped
    assert enc.encode_ordinary(enc.decode(chosen)) == chosen
    # only "g" fits the second position and "in" + "g" merges: go back and change the first piece
    ids["q"] = enc.encode_single_token("q")
    orders = [(np.array([ids["in"], ids["q"]]), 2), (np.array([ids["g"]]), 1)]
    assert _search(from_encoding("o200k_base"), [0, 0], orders, set()) == [ids["q"], ids["g"]]


def test_bad_input(counts):
    for word, dev, msg in [("", 0.04, "empty"), (WORD, 0.0, "between 0 and 1"), (WORD, 1.0, "between 0 and 1"),
                           (WORD, -0.1, "between 0 and 1"), (WORD, 1.5, "between 0 and 1")]:
        with pytest.raises(SupercalError, match=msg):
            make_tokenstein(word, counts, deviation=dev)


def test_cli_tokenstein(tmp_path, counts):
    path = tmp_path / "counts.npz"
    save_counts(counts, path)
    runner = CliRunner()
    res = runner.invoke(cli, ["tokenstein", WORD, "--counts", str(path), "--seed", "3", "--n", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["encoding"] == "o200k_base" and len(data["tokensteins"]) == 2
    first = data["tokensteins"][0]
    assert first["word"] == make_tokenstein(WORD, counts, seed=3, n=2)[0].word
    res = runner.invoke(cli, ["tokenstein", WORD, "--counts", str(path), "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "| word piece | count | tokenstein piece | count |" in res.output
    assert f"{WORD} -> {first['word']}" in res.output and "| super |" in res.output


def test_cli_tokenstein_bad_input(tmp_path, counts):
    path = tmp_path / "counts.npz"
    save_counts(counts, path)
    other = tmp_path / "cl100k.npz"
    save_counts(fake_counts("cl100k_base"), other)
    runner = CliRunner()
    cases = [
        (["", "--counts", str(path)], "word is empty"),
        ([WORD, "--counts", str(path), "--deviation", "0"], "between 0 and 1"),
        ([WORD, "--counts", str(path), "--deviation", "1.2"], "between 0 and 1"),
        ([WORD, "--counts", str(tmp_path / "missing.npz")], "does not exist"),
        ([WORD, "--counts", str(other), "--encoding", "o200k_base"], "counted with cl100k_base"),
        ([WORD, "--counts", str(path), "--encoding", "o300k"], "unknown encoding"),
    ]
    for args, msg in cases:
        res = runner.invoke(cli, ["tokenstein", *args])
        assert res.exit_code != 0 and "Traceback" not in res.output, args
        assert res.output.strip().startswith("Error:") and msg in res.output, (args, res.output)


def test_population_excludes_given_words_and_is_seeded(counts):
    from supercal_mlx.text.tokenstein import population

    first = population(WORD, counts, n=6, seed=2)
    assert len(set(first)) == 6 and population(WORD, counts, n=6, seed=2) == first
    # excluding two members: neither comes back, the others are drawn the same way
    again = population(WORD, counts, n=6, seed=2, exclude=[first[0].upper(), first[3]])
    assert first[0] not in again and first[3] not in again and len(set(again)) == 6
    assert WORD not in first


def test_population_min_pool_varies_a_small_vocabulary():
    enc = get_encoding("o200k_base")
    c = fake_counts()
    letters = _letter_tokens(from_encoding("o200k_base"))
    c.counts[letters] = np.arange(letters.size) * 1000 + 1  # every letter token far from the word's counts
    c.counts[enc.encode_ordinary("hello world")] = 10**12
    plain = make_tokenstein("hello world", c, seed=0, n=4)  # nearest counts first: the same pieces each time
    assert len({t.rows[0].piece for t in plain}) == 1 and all(r.flagged for t in plain for r in t.rows)
    pooled = make_tokenstein("hello world", c, seed=0, n=4, min_pool=8)
    pool = letters[~np.isin(letters, enc.encode_ordinary("hello world"))]
    nearest8 = set(pool[np.argsort(-c.counts[pool], kind="stable")[:8]].tolist())
    assert len({t.rows[0].piece for t in pooled}) > 1  # drawn among the 8 nearest, not always the nearest
    assert {t.rows[0].id for t in pooled} <= nearest8 and all(r.flagged for t in pooled for r in t.rows)


def test_words_in_files_and_tokenstein_files(tmp_path):
    from supercal_mlx.text import tokenstein as ts

    (tmp_path / "c.txt").write_text("Glorp, the ZIBBLE's friend;\nsnark-o 42 café\n")
    assert ts.words_in_files([tmp_path / "c.txt"]) == {"glorp", "the", "zibble", "s", "friend", "snark", "o", "caf"}
    assert ts.words_in(["Ab cd", "ef"]) == {"ab", "cd", "ef"}
    (tmp_path / "t.txt").write_text("# made-up words\nglimber\n\nsnorkelish\nglimber\n")
    assert ts.read_tokenstein_file(tmp_path / "t.txt") == ["glimber", "snorkelish"]
    (tmp_path / "r.json").write_text(json.dumps({"word": "w", "tokensteins": ["aa", "bb"]}))
    assert ts.read_tokenstein_file(tmp_path / "r.json") == ["aa", "bb"]
    (tmp_path / "j.json").write_text(json.dumps({"tokensteins": [{"word": "cc", "rows": []}]}))
    assert ts.read_tokenstein_file(tmp_path / "j.json") == ["cc"]
    (tmp_path / "bad.json").write_text(json.dumps({"other": 1}))
    for bad in ("bad.json", "missing.txt"):
        with pytest.raises(SupercalError):
            ts.read_tokenstein_file(tmp_path / bad)
