"""Value swapping as an intervention: probe and eval --swap-values on the tiny GPT-J, and eval leaving a
run's training tokensteins out of its population."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.io import write_jsonl

W = "supercalifragilisticexpialidocious"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("swapdata")
    write_jsonl(d / "forget.jsonl", [
        {"prompt": "The children tried to spell ", "completion": W + " and laughed."},
        {"prompt": "Oh, ", "completion": "Supercalifragilisticexpialidocious is a song from the film."},
    ])
    write_jsonl(d / "retain.jsonl", [{"text": "Cats and dogs play in the garden while it rains."}])
    write_jsonl(d / "facts.jsonl", [{"prompt": W[0].upper() + W[1:] + " is a song from the film", "answer": " Mary Poppins"}])
    return d


def test_plain_decoding_matches_batch_generator(tiny_model_dir):
    """The loop a swapped model decodes with gives the rows mlx-lm's BatchGenerator gives (swap with itself)."""
    from supercal_mlx.model import load
    from supercal_mlx.runs.probes import generate
    from supercal_mlx.train.values import SwappedModel

    model, tok = load(tiny_model_dir)
    prompts = ["What does " + W + " mean?", "The garden is"]
    opts = dict(temps=[0.0, 0.7], samples=2, max_tokens=12, seed=3)
    want = generate(model, tok, prompts, **opts)
    sm = SwappedModel(model, tok, W, W)
    try:
        got = generate(sm, tok, prompts, **opts)
    finally:
        sm.close()
    assert [r.response for r in got] == [r.response for r in want]
    assert sm.swapped == 4  # the first prompt's word, once per row of its batch (2 temperatures x 2 samples)


def test_probe_swap_values_cli(tiny_model_dir):
    runner = CliRunner()
    args = ["probe", "--model", str(tiny_model_dir), "--prompt", "The garden is big.", "--temps", "0",
            "--max-tokens", "6", "--json"]
    res = runner.invoke(cli, args + ["--swap-values", "garden=dogs", "--swap-layers", "last:1"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and set(rows[0]) >= {"response", "swap_response"}
    same = runner.invoke(cli, args + ["--swap-values", "garden=garden"])
    row = json.loads(same.output.splitlines()[-1])
    assert row["swap_response"] == row["response"]
    bad = runner.invoke(cli, args[:4] + ["What does " + W + " mean?", "--swap-values", W + "=sqproctarine"])
    assert bad.exit_code == 1 and "is 1 tokens but its counterpart 'sqproctarine' is 3" in bad.output
    assert "Traceback" not in bad.output
    none = runner.invoke(cli, args + ["--swap-values", "cat=dogs"])
    assert none.exit_code == 1 and "occurs in none of the prompts" in none.output
    layers = runner.invoke(cli, args + ["--swap-values", "garden=dogs", "--swap-layers", "first:1"])
    assert layers.exit_code == 1 and "--swap-layers" in layers.output


def test_eval_swap_with_itself_measures_the_same(tiny_model_dir, files):
    from supercal_mlx.runs.evaluate import evaluate

    kw = dict(forget=str(files / "forget.jsonl"), retain=str(files / "retain.jsonl"), facts=str(files / "facts.jsonl"),
              word=W, tokensteins=["sqproctarine", "blorvexium"], temps=[0.0], samples=1, answer_tokens=6, boot=10)
    plain = evaluate(tiny_model_dir, **kw)["base"]
    same = evaluate(tiny_model_dir, swap_values=(W, W), **kw)["base"]
    for key in ("forget_nll", "retain_nll", "association", "gap_ratio", "made_up_share"):
        assert same[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-6), key
    assert same["swap_swapped"] > 0 and same["swap_skipped"] == 0
    other = evaluate(tiny_model_dir, swap_values=(W, "sqproctarine"), **kw)["base"]
    # " supercal..." (1 token) has no 1-token counterpart: left alone and counted; "Supercal..." likewise
    assert other["swap_skipped"] > 0 and other["forget_nll"] == pytest.approx(plain["forget_nll"], rel=1e-6)


def test_eval_leaves_the_runs_training_tokensteins_out(tiny_model_dir, files, tmp_path):
    import yaml

    from supercal_mlx.runs.evaluate import evaluate
    from supercal_mlx.train.config import load_config
    from supercal_mlx.train.trainer import unlearn

    unlearn(load_config(model=str(tiny_model_dir), forget=str(files / "forget.jsonl"), out=str(tmp_path / "run"),
                        loss="tokenstein", tokenstein_words=["blorvexium", "sqproctarine"], steps=1, max_tokens=64))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["tokenstein_words"] == ["blorvexium", "sqproctarine"]
    res = evaluate(tiny_model_dir, adapter_path=tmp_path / "run", word=W, temps=[0.0], samples=1, answer_tokens=4,
                   tokensteins=["trandolique", "Sqproctarine", "plimbovar", "blorvexium"], boot=10)
    assert res["left_out"] == ["Sqproctarine", "blorvexium"] and res["tokensteins"] == ["trandolique", "plimbovar"]
    assert set(res["adapted"]["per_tokenstein"]) == {"trandolique", "plimbovar"}
