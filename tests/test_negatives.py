"""Forget data: grep -C chunks, whole-word mentions, windows that never cut a word."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import statistics
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.errors import SupercalError
from supercal_mlx.data.negatives import build_forget, grep_chunks, keyword_patterns, split_grep_output, unescape_twice
from supercal_mlx.data.windows import boundaries, first_ok
from supercal_mlx.text.tokenizer import from_encoding, from_model

WORD = "supercalifragilisticexpialidocious"
FIXTURES = Path(__file__).parent / "fixtures" / "enwik_like"
SAMPLE = FIXTURES / "enwik_sample.xml"
GREP_C5 = FIXTURES / "grep_C5.txt"
FORMS = {
    "Supercalifragilisticexpialidocious": 13,
    "supercalifragilisticexpialidocious": 7,
    "SUPERCALIFRAGILISTICEXPIALIDOCIOUS": 2,
    "SuperCaliFragilisticExpialiDocious": 1,
}


def word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def reference_mentions(text: str, word: str = WORD) -> tuple[set[int], int]:
    """Whole-word mentions by plain string scanning (independent of the regexes): (starts, near-misses)."""
    low, w = text.lower(), word.lower()
    assert len(low) == len(text)
    starts, near, i = set(), 0, low.find(w)
    while i >= 0:
        before = text[i - 1] if i else " "
        after = text[i + len(w)] if i + len(w) < len(text) else " "
        if word_char(before) or word_char(after):
            near += 1
        else:
            starts.add(i)
        i = low.find(w, i + len(w))
    return starts, near


def reference_grep(lines: list[str], n: int, word: str = WORD) -> list[str]:
    """grep -i -C n on a list of lines, in memory: match intervals widened by n, touching ones merged."""
    spans: list[list[int]] = []
    for i, line in enumerate(lines):
        if word.lower() in line.lower():
            lo, hi = max(i - n, 0), min(i + n, len(lines) - 1)
            if spans and lo <= spans[-1][1] + 1:
                spans[-1][1] = hi
            else:
                spans.append([lo, hi])
    return ["".join(lines[lo : hi + 1]) for lo, hi in spans]


@pytest.fixture(scope="module")
def o200k():
    return from_encoding("o200k_base")


@pytest.fixture(scope="module")
def source() -> str:
    return SAMPLE.read_text(encoding="utf-8")


def check_records(records, source_text, tok, window_tokens):
    """The properties every forget record must have; returns the source positions of the mentions covered."""
    starts, _ = reference_mentions(source_text)
    covered = set()
    for r in records:
        prompt, completion = r["prompt"], r["completion"]
        assert set(r) == {"prompt", "completion"}
        assert completion[: len(WORD)].lower() == WORD  # starts with the keyword, case as in the source
        assert completion[: len(WORD)] in FORMS
        whole = prompt + completion
        assert len(tok.encode(whole)) <= window_tokens
        where, i = [], source_text.find(whole)
        while i >= 0:
            where.append(i)
            i = source_text.find(whole, i + 1)
        assert where, "prompt + completion is not a contiguous piece of the source"
        hits = {o + len(prompt) for o in where} & starts
        assert hits, "the completion does not start at a whole-word mention"
        covered |= hits
        for o in where:  # no edge between two word characters
            end = o + len(whole)
            assert not (o > 0 and word_char(source_text[o - 1]) and word_char(source_text[o]))
            assert not (end < len(source_text) and word_char(source_text[end - 1]) and word_char(source_text[end]))
    return covered


def test_fixture_looks_like_enwik9(o200k, source):
    chunks = list(split_grep_output(GREP_C5.open(encoding="utf-8")))
    assert len(chunks) == 6
    assert max(len(o200k.encode(c.text)) for c in chunks) > 2048
    assert any(c.text.startswith("\n") for c in chunks)
    for needle in ("&quot;", "&amp;mdash;", "&lt;ref&gt;", "</page>", "[[Mary Poppins (film)|Mary Poppins]]", "{{fact}}", "ä", "ö", "é"):
        assert needle in source


def test_mentions_counted_exactly(source):
    starts, near = reference_mentions(source)
    assert (len(starts), near) == (23, 6)
    assert Counter(source[i : i + len(WORD)] for i in starts) == FORMS
    _, whole = keyword_patterns(WORD)
    assert {m.start() for m in whole.finditer(source)} == starts


@pytest.mark.parametrize("window_tokens,stride", [(800, None), (120, 25), (40, 7)])
def test_windows_o200k(o200k, source, window_tokens, stride):
    records, summary = build_forget(SAMPLE, WORD, o200k, window_tokens=window_tokens, stride=stride)
    covered = check_records(records, source, o200k, window_tokens)
    assert covered == reference_mentions(source)[0]  # every mention used, none missed
    assert (summary["mentions"], summary["near_misses"], summary["chunks"]) == (23, 6, 6)
    assert summary["forms"] == FORMS
    assert summary["windows"] == len(records)
    assert summary["tokens"]["max"] <= window_tokens
    # every mention has its "keyword at the start" window, and exactly one
    assert sum(r["prompt"] == "" for r in records) == 23
    if window_tokens == 800:
        # mentions deep in the long chunk fill the window exactly or within a token
        assert summary["tokens"]["max"] >= window_tokens - 1


def test_windows_slide_from_keyword_at_end_to_start(o200k):
    records, _ = build_forget(SAMPLE, WORD, o200k, window_tokens=200, stride=50)
    # group the windows of one mention: consecutive records, each starting a new group at the widest prompt
    groups, last_prompt = [], None
    for r in records:
        if last_prompt is None or last_prompt == "":
            groups.append([])
        groups[-1].append(r)
        last_prompt = r["prompt"]
    assert len(groups) == 23
    steps = []
    for g in groups:
        prompts = [len(o200k.encode(r["prompt"])) for r in g]
        assert prompts == sorted(prompts, reverse=True) and prompts[-1] == 0
        k = len(o200k.encode(g[0]["completion"][: len(WORD)]))
        if prompts[0] >= 200 - k - 2:  # enough context before: keyword at the end, then 50 tokens less each time
            assert len(o200k.encode(g[0]["completion"])) <= k + 3  # the keyword, and what still fits
            assert len(g) == 5
            steps += [p1 - p2 for p1, p2 in zip(prompts[:-1], prompts[1:-1])]
    # edges snap to word boundaries, so a step is the stride give or take a word's tokens
    assert len(steps) >= 40 and all(35 <= d <= 65 for d in steps) and 49 <= statistics.median(steps) <= 51


def test_windows_in_model_tokenizer(tiny_tokenizer_dir, source):
    tok = from_model(tiny_tokenizer_dir)
    records, summary = build_forget(SAMPLE, WORD, tok, window_tokens=300, stride=100)
    assert check_records(records, source, tok, 300) == reference_mentions(source)[0]
    assert summary["mentions"] == 23


@pytest.mark.parametrize("n", [0, 1, 2, 5, 11])
def test_chunks_equal_grep_minus_C(source, n):
    lines = source.splitlines(keepends=True)
    substring, _ = keyword_patterns(WORD)
    ours = [c.text for c in grep_chunks(iter(lines), substring, context=n)]
    assert ours == reference_grep(lines, n)
    if shutil.which("grep"):
        out = subprocess.run(["grep", "-i", "-C", str(n), WORD, str(SAMPLE)], capture_output=True, check=True).stdout
        assert [c.text for c in split_grep_output(out.decode("utf-8").splitlines(keepends=True))] == ours


def test_grep_chunks_blank_lines_and_merging():
    lines = [f"{x}\n" for x in ["a", "", "KEY", "", "b", "c", "d", "", "key", "e", "", "", "", "f", "g", "KEY"]]
    pat = keyword_patterns("key")[0]
    chunks = list(grep_chunks(iter(lines), pat, context=2))
    assert [c.text for c in chunks] == reference_grep(lines, 2, "key") == ["a\n\nKEY\n\nb\n", "d\n\nkey\ne\n\n", "f\ng\nKEY\n"]
    assert [c.line for c in chunks] == [1, 7, 14]
    # contexts that touch (gap of exactly 2N lines) are merged, as grep prints no "--" between them
    assert len(list(grep_chunks(iter(["key\n", "1\n", "2\n", "3\n", "4\n", "key\n"]), pat, context=2))) == 1
    assert len(list(grep_chunks(iter(["key\n", "1\n", "2\n", "3\n", "4\n", "5\n", "key\n"]), pat, context=2))) == 2


def test_from_grep_output_gives_the_same_records(o200k):
    streamed = build_forget(SAMPLE, WORD, o200k, context_lines=5, window_tokens=300)
    grepped = build_forget(GREP_C5, WORD, o200k, from_grep=True, window_tokens=300)
    assert streamed[0] == grepped[0]
    assert grepped[1]["chunks"] == 6 and grepped[1]["context_lines"] is None


def test_compressed_corpus_gives_the_same_records(o200k, tmp_path):
    gz = tmp_path / "sample.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    assert build_forget(gz, WORD, o200k, window_tokens=200)[0] == build_forget(SAMPLE, WORD, o200k, window_tokens=200)[0]


def test_unescape_html_twice(o200k, source):
    records, summary = build_forget(SAMPLE, WORD, o200k, window_tokens=400, unescape_html=True)
    rendered = unescape_twice(source)
    assert unescape_twice("a &amp;mdash; b &lt;ref&gt; &quot;x&quot; &amp;amp;") == 'a — b <ref> "x" &'
    assert check_records(records, rendered, o200k, 400) == reference_mentions(rendered)[0]
    text = "".join(r["prompt"] + r["completion"] for r in records)
    assert "&quot;" not in text and "&amp;" not in text and "&lt;" not in text
    assert "—" in text and "<ref>" in text
    assert summary["mentions"] == 23


def test_boundaries_never_inside_a_word():
    assert boundaries("ab cd") == [0, 2, 3, 5]
    assert boundaries("Müller's x_y 42.") == [0, 6, 7, 8, 9, 12, 13, 15, 16]
    assert boundaries("") == [0]
    assert boundaries("  ") == [0, 1, 2]


def test_first_ok_finds_the_smallest_index_from_any_hint():
    rng = random.Random(0)
    calls = []
    for _ in range(300):
        n = rng.randint(1, 60)
        cut = rng.randint(0, n - 1)
        ok = lambda i: calls.append(i) or i >= cut  # noqa: E731
        assert first_ok(n, ok, rng.randint(-5, n + 5)) == cut
    # a good hint costs a few calls
    calls.clear()
    assert first_ok(10_000, lambda i: calls.append(i) or i >= 5000, 5001) == 5000
    assert len(calls) <= 4


def test_near_misses_only_is_no_mention(o200k, tmp_path):
    corpus = tmp_path / "near.txt"
    corpus.write_text(f"un{WORD} and {WORD}ly and {WORD}_x and é{WORD}\n" * 3, encoding="utf-8")
    with pytest.raises(SupercalError, match=f"no mention of {WORD} in"):
        build_forget(corpus, WORD, o200k)
    corpus.write_text(f"{WORD}-like, {WORD}'s, ({WORD}) and 1{WORD}\n", encoding="utf-8")
    records, summary = build_forget(corpus, WORD, o200k)
    assert (summary["mentions"], summary["near_misses"]) == (3, 1)


def test_bad_input(o200k, tmp_path):
    with pytest.raises(SupercalError, match="no mention of lollipop in"):
        build_forget(SAMPLE, "lollipop", o200k)
    with pytest.raises(SupercalError, match="smaller than the keyword"):
        build_forget(SAMPLE, WORD, o200k, window_tokens=5)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SupercalError, match="empty"):
        build_forget(empty, WORD, o200k)
    with pytest.raises(SupercalError, match="stride"):
        build_forget(SAMPLE, WORD, o200k, stride=0)


def test_cli_negatives(tmp_path):
    out = tmp_path / "forget.jsonl"
    args = ["negatives", str(SAMPLE), "--keyword", WORD, "--encoding", "o200k_base", "--window-tokens", "256", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "mentions 23" in res.output and "near-misses skipped 6" in res.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records == build_forget(SAMPLE, WORD, from_encoding("o200k_base"), window_tokens=256)[0]
    assert len(records) >= 23 and all(r["completion"][: len(WORD)].lower() == WORD for r in records)

    res = CliRunner().invoke(cli, args)  # exists, no --force
    assert res.exit_code == 1 and "already exists" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, args + ["--force", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["mentions"] == 23

    missing = tmp_path / "none.jsonl"
    res = CliRunner().invoke(cli, ["negatives", str(SAMPLE), "--keyword", "lollipop", "--out", str(missing)])
    assert res.exit_code == 1 and f"no mention of lollipop in {SAMPLE}" in res.output
    assert not missing.exists() and not list(tmp_path.glob(".none.jsonl*"))
    res = CliRunner().invoke(cli, ["negatives", str(SAMPLE), "--keyword", WORD, "--window-tokens", "4", "--out", str(missing)])
    assert res.exit_code == 1 and "smaller than the keyword" in res.output and not missing.exists()


def test_grep_output_without_from_grep_is_flagged(tmp_path):
    out = tmp_path / "f.jsonl"
    # with the same N, grep's chunks come out unchanged; with a wider context they run over the "--" lines
    args = ["negatives", str(GREP_C5), "--keyword", WORD, "--window-tokens", "200", "--out", str(out), "--force"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "use --from-grep" not in res.output
    res = CliRunner().invoke(cli, args + ["--context-lines", "8"])
    assert res.exit_code == 0 and "use --from-grep" in res.output
    res = CliRunner().invoke(cli, ["negatives", str(SAMPLE), "--keyword", WORD, "--from-grep", "--out", str(tmp_path / "g.jsonl")])
    assert res.exit_code == 0 and "use --from-grep" not in res.output  # a file with no '--' is one chunk


def test_too_common_word_is_refused(o200k, tmp_path, monkeypatch):
    import supercal_mlx.data.negatives as negatives

    monkeypatch.setattr(negatives, "MAX_CHUNK_CHARS", 1000)
    corpus = tmp_path / "common.txt"
    corpus.write_text("the cat and the dog\n" * 200)
    with pytest.raises(SupercalError, match="too common"):
        build_forget(corpus, "the", o200k)
    with pytest.raises(SupercalError, match="not grep -C output"):
        build_forget(corpus, "the", o200k, from_grep=True)


def test_cli_negatives_with_model_tokenizer(tiny_tokenizer_dir, tmp_path, source):
    out = tmp_path / "forget.jsonl"
    args = ["negatives", str(GREP_C5), "--from-grep", "--keyword", WORD.upper(), "--model", str(tiny_tokenizer_dir),
            "--window-tokens", "120", "--stride", "60", "--unescape-html", "--json", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["mentions"] == 23 and summary["tokenizer"].startswith("model:") and summary["tokens"]["max"] <= 120
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    check_records(records, unescape_twice(source), from_model(tiny_tokenizer_dir), 120)


def test_streamed_records_and_the_window_cap(o200k, tmp_path):
    """The CLI's streamed records equal the listed ones, with the same summary once exhausted; a word too
    common for a forget set stops at --max-windows with one line, and nothing is written."""
    listed, summary = build_forget(SAMPLE, WORD, o200k, window_tokens=200)
    streamed, later = build_forget(SAMPLE, WORD, o200k, window_tokens=200, stream=True)
    assert later == {} and list(streamed) == listed and later == summary and summary["windows"] == len(listed) > 3
    assert build_forget(SAMPLE, WORD, o200k, window_tokens=200, max_windows=len(listed))[0] == listed
    with pytest.raises(SupercalError, match=f"more than {len(listed) - 1} windows"):
        build_forget(SAMPLE, WORD, o200k, window_tokens=200, max_windows=len(listed) - 1)
    out = tmp_path / "the.jsonl"
    res = CliRunner().invoke(cli, ["negatives", str(SAMPLE), "--keyword", "the", "--encoding", "o200k_base",
                                   "--max-windows", "3", "--out", str(out)])
    assert res.exit_code == 1 and "the gives more than 3 windows" in res.output and "Traceback" not in res.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
