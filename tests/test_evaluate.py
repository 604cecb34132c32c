"""supercal eval: each metric against a numpy reference on the tiny random GPT-J, adapters on top, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from supercal_mlx.runs import evaluate as ev
from supercal_mlx.cli import cli
from supercal_mlx.io import write_jsonl

WORD = "supercalifragilisticexpialidocious"
OTHER = "sqproctarine"


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from supercal_mlx.model import load

    model, tok = load(tiny_model_dir)
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata")
    write_jsonl(d / "forget.jsonl", [
        {"prompt": "The children tried to spell ", "completion": "supercalifragilisticexpialidocious and laughed."},
        {"prompt": "", "completion": "Supercalifragilisticexpialidocious is a song from the 1964 film Mary Poppins."},
    ])
    write_jsonl(d / "retain.jsonl", [{"text": "Cats and dogs play in the garden while it rains."},
                                     {"text": "A tokenstein is a made-up word built from pieces."}])
    write_jsonl(d / "facts.jsonl", [{"prompt": "Supercalifragilisticexpialidocious is a song from the film",
                                     "answer": " Mary Poppins"}])
    return d


def _logsoftmax(model, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    logits = np.array(model(mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)  # (L, V)
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def test_nll_and_logprobs_equal_a_numpy_reference(loaded):
    model, tok = loaded
    examples = [(tok.encode("The children tried to spell supercalifragilisticexpialidocious"), 5),
                (tok.encode("Cats and dogs"), 0)]
    ref_sums, ref_n = [], 0
    for ids, n_prompt in examples:
        lp = _logsoftmax(model, ids)
        picked = [lp[j, ids[j + 1]] for j in range(max(n_prompt, 1) - 1, len(ids) - 1)]
        ref_sums.append(sum(picked))
        ref_n += len(picked)
    nll, n = ev.masked_nll(model, examples, batch_size=1)
    assert n == ref_n
    assert nll == pytest.approx(-sum(ref_sums) / ref_n, abs=1e-4)
    assert ev.masked_nll(model, examples, batch_size=2)[0] == pytest.approx(nll, abs=1e-5)  # padding changes nothing
    np.testing.assert_allclose(ev.sequence_logprobs(model, examples), ref_sums, atol=1e-3)


def test_distances_compare_aligned_positions_after_the_word(loaded):
    from supercal_mlx.runs import gap

    model, tok = loaded
    template = ("What does ", " mean? It")
    words = [WORD, OTHER, "glimbery"]
    d = gap.distances(model, tok, words, [template])  # (1, 3, 3)
    assert d.shape == (1, 3, 3) and np.all(np.diag(d[0]) == 0)
    np.testing.assert_allclose(d[0], d[0].T, atol=1e-6)
    # reference: each full string encoded once; the tail all three share, and the position before it
    full = [tok.encode("What does " + w + " mean? It") for w in words]
    k = 0
    while all(f[-1 - k] == full[0][-1 - k] for f in full):
        k += 1
    assert k == len(tok.encode(" mean? It"))  # here the shared tail is exactly the suffix
    lps = [_logsoftmax(model, f)[len(f) - k - 1:] for f in full]
    for a in range(3):
        for b in range(3):
            sym = 0.5 * ((np.exp(lps[a]) * (lps[a] - lps[b])).sum(-1) + (np.exp(lps[b]) * (lps[b] - lps[a])).sum(-1))
            assert d[0, a, b] == pytest.approx(sym.mean(), rel=1e-3, abs=1e-6)
    assert d[0, 0, 1] > 0


def test_gap_stats_on_known_distances():
    from supercal_mlx.runs.gap import gap_stats

    d = np.zeros((2, 4, 4))  # 2 templates, the word + 3 tokensteins
    d[0, 0, 1:] = d[0, 1:, 0] = [2.0, 4.0, 6.0]
    d[1, 0, 1:] = d[1, 1:, 0] = [4.0, 4.0, 4.0]
    pair = np.array([[0, 1.0, 2.0], [1.0, 0, 3.0], [2.0, 3.0, 0]])
    d[0, 1:, 1:] = pair
    d[1, 1:, 1:] = pair
    s = gap_stats(d, boot=300, seed=0)
    assert s["tokenstein_gap"] == pytest.approx(4.0)
    assert s["tokenstein_floor"] == pytest.approx(2.0)
    assert s["gap_ratio"] == pytest.approx(2.0)
    assert s["per_tokenstein_gap"] == pytest.approx([3.0, 4.0, 5.0])
    assert 0 < s["gap_ratio_se"] < 2 and gap_stats(d, boot=300, seed=0)["gap_ratio_se"] == s["gap_ratio_se"]
    flat = np.ones((3, 5, 5)) - np.eye(5)  # every distance 1: no spread to resample
    assert gap_stats(flat)["gap_ratio"] == 1.0 and gap_stats(flat)["gap_ratio_se"] == 0.0
    one = gap_stats(d[:, :2, :2])
    assert one == {"tokenstein_gap": pytest.approx(3.0), "per_tokenstein_gap": pytest.approx([3.0])}


def test_answer_scoring():
    from supercal_mlx.runs import madeup

    assert madeup.answer_line("\n\n  It is made-up.  \nNext line: invented") == "It is made-up."
    pat = madeup.marker_pattern(madeup.MARKERS)
    assert pat.search("It BLENDS lo and ora") and pat.search("That is Not A Real Word.")
    assert pat.search("It means something wonderful") is None and pat.search("reinvented") is None
    assert not pat.search("A real word from a film")
    assert madeup.named_pieces("It blends super, cal and if", ["super", "cal", "if", "ocious"]) == 3
    assert madeup.named_pieces("supercalifragilistic", ["super", "cal"]) == 0  # inside a word is no naming
    assert madeup.parse_markers(["made-up, Invented", "invented,glued"]) == ["made-up", "invented", "glued"]


def test_behaviour_shares_from_fixed_answers(loaded, monkeypatch):
    from supercal_mlx.runs import madeup, probes

    model, tok = loaded
    replies = {WORD: ["It means something wonderful.", "It is a made-up word.\nmore",
                      "\nIt blends super, cal and if.", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
               OTHER: ["Nobody knows.", "It is invented.", "A shop.", "It is not a real word."]}

    def fake_generate(model, tokenizer, prompts, *, temps, samples, **kw):
        rows = []
        for p in prompts:
            w = WORD if WORD in p else OTHER
            for i, (t, s) in enumerate((t, s) for t in temps for s in range(1, samples + 1)):
                rows.append(probes.ProbeRow(p, t, s, replies[w][i]))
        return rows

    monkeypatch.setattr(probes, "generate", fake_generate)
    b = madeup.behaviour(model, tok, WORD, [OTHER], questions=["What does {word} mean?"], temps=(0.5, 1.0),
                         samples=2)
    assert b["made_up_share"] == 0.5  # "made-up" and "blends"; the line after the answer does not count
    assert b["made_up_share_tokensteins"] == 0.75
    assert b["degeneration"] == 0.25
    pieces = madeup.word_pieces(tok, WORD)
    assert b["pieces_share"] == (0.25 if sum(p in ("super", "cal", "if") for p in pieces) >= 2 else 0.0)
    assert [a["made_up"] for a in b["answers"]] == [False, True, True, False]
    assert b["per_tokenstein"] == [{"made_up_share": 0.75, "pieces_share": 0.0}]


def _zero_adapters(model_dir, run_dir, *, perturb: bool):
    """A run folder whose LoRA layers add exactly nothing (lora_b = 0), or something (perturb)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from supercal_mlx.train.lora import apply_lora, save_adapters
    from supercal_mlx.model import load

    model, _ = load(model_dir)
    mx.random.seed(0)  # lora_a is drawn from the global generator: make the run folder independent of earlier tests
    cfg = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, keys=["attn.q_proj", "attn.v_proj"], layers="all")
    if perturb:
        mx.random.seed(1)
        lora_b = [(k, 0.5 * mx.random.normal(v.shape)) for k, v in tree_flatten(model.trainable_parameters())
                  if k.endswith("lora_b")]
        model.update(tree_unflatten(lora_b))
    run_dir.mkdir()
    save_adapters(model, run_dir, cfg)
    return run_dir


def test_zero_adapters_measure_like_the_base_and_real_ones_do_not(tiny_model_dir, files, tmp_path):
    zero = _zero_adapters(tiny_model_dir, tmp_path / "zero", perturb=False)
    moved = _zero_adapters(tiny_model_dir, tmp_path / "moved", perturb=True)
    kw = dict(forget=str(files / "forget.jsonl"), retain=str(files / "retain.jsonl"), word=WORD,
              tokensteins=[OTHER, "glimbery", "snorkelish"], facts=str(files / "facts.jsonl"), samples=1,
              answer_tokens=8, temps=(0.5, 1.0))
    res = ev.evaluate_runs(tiny_model_dir, [zero, moved], **kw)
    base, same, other = res["base"], res["adapted"][str(zero)], res["adapted"][str(moved)]
    for key in ("forget_nll", "retain_nll", "association", "tokenstein_gap", "tokenstein_floor", "gap_ratio"):
        assert same[key] == pytest.approx(base[key], abs=1e-5)
        assert abs(other[key] - base[key]) > 1e-3
    assert same["answers"] == base["answers"]  # the same model samples the same answers
    assert base["retain_ppl"] == pytest.approx(np.exp(base["retain_nll"]))
    assert base["answers_per_word"] == len(res["questions"]) * 2 and len(base["answers"]) == base["answers_per_word"]
    assert list(base["per_tokenstein"]) == [OTHER, "glimbery", "snorkelish"]
    shares = [v["made_up_share"] for v in base["per_tokenstein"].values()]
    assert base["made_up_share_tokensteins"] == pytest.approx(sum(shares) / 3)
    assert base["gap_ratio"] == pytest.approx(base["tokenstein_gap"] / base["tokenstein_floor"])
    assert np.mean([v["gap"] for v in base["per_tokenstein"].values()]) == pytest.approx(base["tokenstein_gap"])
    assert res["skipped"] == {}
    single = ev.evaluate(tiny_model_dir, adapter_path=moved, **kw)  # one run: the same numbers
    assert single["adapted"]["forget_nll"] == pytest.approx(other["forget_nll"], abs=1e-5)
    assert single["adapter_path"] == str(moved)


def test_no_facts_no_association_and_no_demo_pairs(tiny_model_dir, files):
    res = ev.evaluate(tiny_model_dir, forget=str(files / "forget.jsonl"), word="hogwarts", samples=1,
                      answer_tokens=4, temps=(1.0,))
    assert "association" not in res["base"] and res["facts"] is None
    assert "no --facts given" in res["skipped"]["association"] and "gap_ratio" in res["skipped"]
    assert all("hogwarts" in a["question"] and "Mary Poppins" not in a["question"] for a in res["base"]["answers"])
    assert "made_up_share" in res["base"] and "made_up_share_tokensteins" not in res["base"]


def test_cli_population_files_and_bad_input(tiny_model_dir, files, tmp_path):
    from supercal_mlx.text.counting import count_tokens, save_counts
    from supercal_mlx.text.tokenstein import words_in_files

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["Supercalifragilisticexpialidocious is a song from the 1964 film Mary Poppins.",
                                  "The children tried to spell supercalifragilisticexpialidocious and laughed.",
                                  "A tokenstein is a made-up word built from pieces: sqproctarine means nothing.",
                                  "Cats and dogs play in the garden while it rains."] * 5))
    save_counts(count_tokens([str(corpus)], model=tiny_model_dir), tmp_path / "counts.npz")
    (tmp_path / "q.jsonl").write_text('{"question": "Tell me about {word}."}\n')
    (tmp_path / "t.jsonl").write_text('{"prefix": "I said ", "suffix": " twice."}\n')
    runner = CliRunner()
    base = ["eval", "--model", str(tiny_model_dir), "--forget", str(files / "forget.jsonl"), "--word", WORD,
            "--samples", "1", "--answer-tokens", "4", "--temps", "1.0"]
    res = runner.invoke(cli, base + ["--counts", str(tmp_path / "counts.npz"), "--tokensteins", "4", "--questions",
                                     str(tmp_path / "q.jsonl"), "--templates", str(tmp_path / "t.jsonl"),
                                     "--made-up-markers", "nothing,zzz", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    words = words_in_files([corpus, files / "forget.jsonl"])
    assert len(out["tokensteins"]) == 4 and not set(out["tokensteins"]) & words
    assert out["excluded_from"] == [str(corpus), str(files / "forget.jsonl")]
    assert out["questions"] == ["Tell me about {word}."] and out["templates"] == [["I said ", " twice."]]
    assert out["markers"] == ["nothing", "zzz"] and len(out["base"]["answers"]) == 1
    assert set(out["base"]["per_tokenstein"]) == set(out["tokensteins"])
    assert {"gap", "made_up_share", "pieces_share"} <= set(out["base"]["per_tokenstein"][out["tokensteins"][0]])
    (tmp_path / "ts.txt").write_text("glimbery\nsnorkelish\n")
    res = runner.invoke(cli, base + ["--tokenstein-file", str(tmp_path / "ts.txt"), "--facts", str(files / "facts.jsonl")])
    assert res.exit_code == 0, res.output
    assert "2 tokensteins: glimbery snorkelish" in res.output and "gap ratio" in res.output
    assert "made-up share, tokensteins" in res.output and "association" in res.output
    assert res.output.rstrip().endswith("not measured: retain_nll: no retain data given (--retain)")
    res = runner.invoke(cli, ["eval", "--model", str(tiny_model_dir), "--forget", str(files / "forget.jsonl"),
                              "--facts", str(files / "facts.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["adapted"] is None and "retain_nll" not in out["base"] and "tokenstein_gap" not in out["base"]
    assert len(out["base"]["association_pairs"]) == 1
    (tmp_path / "badq.jsonl").write_text('{"question": "What is it?"}\n')
    for args, msg in [
        (["--counts", str(tmp_path / "counts.npz"), "--tokenstein-file", str(tmp_path / "ts.txt")], "not both"),
        (["--questions", str(tmp_path / "badq.jsonl")], "has no {word}"),
        (["--tokenstein-file", str(files / "facts.jsonl")], "no list of made-up words"),
        (["--adapter-path", str(files)], "has no adapter_config.json"),
        (["--made-up-markers", " , "], "at least one marker"),
    ]:
        res = runner.invoke(cli, base + args)
        assert res.exit_code == 1 and f"Error: " in res.output and msg in res.output, (args, res.output)
    res = runner.invoke(cli, ["eval", "--model", str(tiny_model_dir), "--forget", str(files / "retain.jsonl")])
    assert res.exit_code == 1 and "missing key(s) prompt, completion" in res.output
    res = runner.invoke(cli, ["eval", "--model", str(tiny_model_dir), "--tokenstein-file", str(tmp_path / "ts.txt")])
    assert res.exit_code == 1 and "give --word too" in res.output


def test_format_table_puts_runs_side_by_side():
    text = ev.format_table([("before", {"forget_nll": 1.0, "association": -2.5}),
                            ("after", {"forget_nll": 3.25, "association": -10.0})])
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "before", "after"]
    assert lines[2].split()[-2:] == ["1.000", "3.250"]
    assert lines[3].split()[-2:] == ["-2.500", "-10.000"]
    assert len(lines) == 4  # metrics nobody measured are left out
    spread = ev.format_table([("ga", {"gap_ratio": (1.5, 0.25), "gap_ratio_se": 0.1}), ("npo", {"gap_ratio": 2.0})])
    row = spread.splitlines()[2]
    assert row.startswith("gap ratio") and "1.500 ± 0.250" in row and row.rstrip().endswith("2.000")
    single = ev.format_table([("base", {"gap_ratio": 1.5, "gap_ratio_se": 0.125})]).splitlines()
    assert single[2].split()[-1] == "1.500" and single[3].split()[-2:] == ["±", "0.125"]
