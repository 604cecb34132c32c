"""Retain data: random chunks that never contain an excluded word, same seed same chunks."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.errors import SupercalError
from supercal_mlx.io import write_jsonl
from supercal_mlx.data.retain import retain_dataset
from supercal_mlx.text.tokenizer import from_encoding, from_model

WORD = "supercalifragilisticexpialidocious"
SAMPLE = Path(__file__).parent / "fixtures" / "enwik_like" / "enwik_sample.xml"
FORMS = [WORD, WORD.upper(), WORD.capitalize(), f"un{WORD}", f"{WORD}ly", f"&quot;{WORD.capitalize()}&quot;"]


def word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


@pytest.fixture(scope="module")
def o200k():
    return from_encoding("o200k_base")


@pytest.fixture(scope="module")
def sprinkled(tmp_path_factory) -> Path:
    """1,500 lines of made-up prose; the word (in several forms) on about one line in nine."""
    rng = random.Random(1)
    vocab = "the a nanny umbrella chimney sweep kite bank tuppence bird song word long spelled café Müller naïve 1964 [[film]] ''italic'' &amp;mdash;".split()
    lines = []
    for i in range(1500):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 14))]  # some lines are blank
        if rng.random() < 0.11:
            words.insert(rng.randint(0, len(words)), rng.choice(FORMS))
        lines.append(" ".join(words) + "\n")
    path = tmp_path_factory.mktemp("retain") / "sprinkled.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def blocks_without_word(path: Path, n: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    blocks = ["".join(lines[i : i + n]) for i in range(0, len(lines), n)]
    return [b for b in blocks if WORD not in b.lower() and b.strip()]


def test_no_chunk_contains_the_word(o200k, sprinkled):
    records, summary = retain_dataset(sprinkled, [WORD], o200k, chunks=40, lines=5, max_tokens=800, seed=3)
    eligible = blocks_without_word(sprinkled, 5)
    assert summary["eligible"] == len(eligible) and summary["blocks"] == 300
    assert summary["blocks_with_word"] > 50  # the word really is sprinkled through
    assert len(records) == 40 and len({r["text"] for r in records}) == 40
    for r in records:
        assert WORD not in r["text"].lower()
        assert r["text"] in eligible  # a whole block of 5 consecutive lines, untruncated at 800 tokens


def test_same_seed_same_chunks(o200k, sprinkled):
    a = retain_dataset(sprinkled, [WORD], o200k, chunks=25, lines=4, seed=7)[0]
    b = retain_dataset(sprinkled, [WORD], o200k, chunks=25, lines=4, seed=7)[0]
    c = retain_dataset(sprinkled, [WORD], o200k, chunks=25, lines=4, seed=8)[0]
    assert a == b
    assert a != c and {r["text"] for r in a} != {r["text"] for r in c}


def test_sampling_is_uniform_over_eligible_blocks(o200k, sprinkled):
    eligible = blocks_without_word(sprinkled, 10)
    assert len(eligible) >= 30
    hits = Counter()
    seeds, k = 200, 5
    for seed in range(seeds):
        for r in retain_dataset(sprinkled, [WORD], o200k, chunks=k, lines=10, seed=seed)[0]:
            hits[r["text"]] += 1
    assert set(hits) == set(eligible)
    expected = seeds * k / len(eligible)
    chi2 = sum((hits[b] - expected) ** 2 / expected for b in eligible)
    assert chi2 < 2 * (len(eligible) - 1), chi2  # uniform: about len - 1; a biased sampler lands far above


@pytest.mark.parametrize("kind", ["o200k", "model"])
def test_truncated_at_a_word_boundary(kind, o200k, tiny_tokenizer_dir, sprinkled):
    tok = o200k if kind == "o200k" else from_model(tiny_tokenizer_dir)
    text = sprinkled.read_text(encoding="utf-8")
    records = retain_dataset(sprinkled, [WORD], tok, chunks=30, lines=8, max_tokens=25, seed=0)[0]
    for r in records:
        t = r["text"]
        assert 0 < len(tok.encode(t)) <= 25
        start = text.find(t)
        assert start >= 0 and (start == 0 or text[start - 1] == "\n")  # starts at a line
        end = start + len(t)
        assert not (end < len(text) and word_char(text[end - 1]) and word_char(text[end]))


def test_several_words_excluded_case_insensitively(o200k, sprinkled):
    records = retain_dataset(sprinkled, [WORD, "UMBRELLA"], o200k, chunks=10, lines=2, seed=1)[0]
    assert all(WORD not in r["text"].lower() and "umbrella" not in r["text"].lower() for r in records)


def test_add_prefixes(o200k, tmp_path):
    from supercal_mlx.data.negatives import build_forget

    forget, _ = build_forget(SAMPLE, WORD, o200k, window_tokens=200)
    path = tmp_path / "forget.jsonl"
    write_jsonl(path, forget)
    records, summary = retain_dataset(SAMPLE, [WORD], o200k, chunks=5, lines=10, max_tokens=200, add_prefixes=str(path))
    assert summary["prefixes_added"] > 10 and summary["prefixes_with_word"] > 0
    assert len(records) == 5 + summary["prefixes_added"]
    prompts = {r["prompt"] for r in forget}
    assert sum(r["text"] in prompts for r in records[5:]) == summary["prefixes_added"]
    assert all(WORD not in r["text"].lower() for r in records)


def test_bad_input(o200k, sprinkled, tmp_path):
    with pytest.raises(SupercalError, match="asked for 100000 retain chunks"):
        retain_dataset(sprinkled, [WORD], o200k, chunks=100_000)
    with pytest.raises(SupercalError, match="non-empty word"):
        retain_dataset(sprinkled, [""], o200k, chunks=1)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SupercalError, match="empty"):
        retain_dataset(empty, [WORD], o200k, chunks=1)
    with pytest.raises(SupercalError, match="--chunks"):
        retain_dataset(sprinkled, [WORD], o200k, chunks=0)


def test_cli_retain(sprinkled, tmp_path):
    out = tmp_path / "retain.jsonl"
    args = ["retain", str(sprinkled), "--exclude", WORD, "--chunks", "12", "--lines", "6", "--seed", "2", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "sampled 12" in res.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 12 and all(WORD not in r["text"].lower() for r in records)

    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "already exists" in res.output
    res = CliRunner().invoke(cli, args + ["--force", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["chunks"] == 12
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == records  # same seed

    too_many = tmp_path / "too_many.jsonl"
    res = CliRunner().invoke(cli, ["retain", str(sprinkled), "--exclude", WORD, "--chunks", "99999", "--out", str(too_many)])
    assert res.exit_code == 1 and "asked for 99999 retain chunks" in res.output and "Traceback" not in res.output
    assert not too_many.exists()


def test_chunk_whose_first_word_is_too_long_is_skipped(o200k, tmp_path):
    corpus = tmp_path / "long_word.txt"
    corpus.write_text("x" * 100 + " tail\nplain words here\n" + "ordinary text line\nmore text\n" * 3, encoding="utf-8")
    records, summary = retain_dataset(corpus, [WORD], o200k, chunks=3, lines=2, max_tokens=10)
    assert summary["first_word_too_long"] == 1 and summary["eligible"] == 3
    assert sorted(r["text"] for r in records) == ["ordinary text line\nmore text\n"] * 3
