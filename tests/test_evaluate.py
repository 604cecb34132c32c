"""supercal eval: each metric against a numpy reference on the tiny random GPT-J, adapters on top, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from supercal_mlx.runs import evaluate as ev
from supercal_mlx.demo import synthetic
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


def test_tokenstein_gap_compares_aligned_positions_after_the_word(loaded):
    model, tok = loaded
    templates = [("What does ", " mean? It")]
    assert ev.tokenstein_gap(model, tok, WORD, WORD, templates=templates) == pytest.approx(0.0, abs=1e-6)
    gap = ev.tokenstein_gap(model, tok, WORD, OTHER, templates=templates)
    assert gap == pytest.approx(ev.tokenstein_gap(model, tok, OTHER, WORD, templates=templates), abs=1e-5)
    # reference: the distributions at the word's last token and at each suffix token, paired up
    head_w, head_o, tail = (tok.encode(t) for t in ("What does " + WORD, "What does " + OTHER, " mean? It"))
    assert len(head_w) != len(head_o)  # the words differ in token count; only positions after them are compared
    lp_w = _logsoftmax(model, head_w + tail)[len(head_w) - 1:]
    lp_o = _logsoftmax(model, head_o + tail)[len(head_o) - 1:]
    assert lp_w.shape[0] == lp_o.shape[0] == len(tail) + 1
    sym = 0.5 * ((np.exp(lp_w) * (lp_w - lp_o)).sum(-1) + (np.exp(lp_o) * (lp_o - lp_w)).sum(-1))
    assert gap == pytest.approx(sym.mean(), rel=1e-3)
    assert gap > 0


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


def test_zero_adapters_measure_like_the_base_and_real_ones_do_not(tiny_model_dir, files, tmp_path, loaded):
    zero = _zero_adapters(tiny_model_dir, tmp_path / "zero", perturb=False)
    moved = _zero_adapters(tiny_model_dir, tmp_path / "moved", perturb=True)
    kw = dict(forget=str(files / "forget.jsonl"), retain=str(files / "retain.jsonl"), word=WORD, tokenstein=OTHER)
    res = ev.evaluate_runs(tiny_model_dir, [zero, moved], **kw)
    base, same, other = res["base"], res["adapted"][str(zero)], res["adapted"][str(moved)]
    for key in ("forget_nll", "retain_nll", "association", "tokenstein_gap"):
        assert same[key] == pytest.approx(base[key], abs=1e-5)
        assert other[key] != pytest.approx(base[key], rel=1e-3)
    assert base["retain_ppl"] == pytest.approx(np.exp(base["retain_nll"]))
    assert base["degeneration_samples"] == 4 * len(ev.DEGENERATION_TEMPS) * 2  # 4 probe prompts, 2 samples
    share, rows = ev.degeneration(*loaded, synthetic.probe_prompts(WORD), seed=0)  # per-row keys: exactly reproducible
    assert base["degeneration"] == share and len(rows) == base["degeneration_samples"]
    single = ev.evaluate(tiny_model_dir, adapter_path=moved, **kw)  # one run: the same numbers
    assert single["adapted"]["forget_nll"] == pytest.approx(other["forget_nll"], abs=1e-5)
    assert single["adapter_path"] == str(moved)


def test_cli_table_json_and_bad_input(tiny_model_dir, files):
    runner = CliRunner()
    base = ["eval", "--model", str(tiny_model_dir), "--forget", str(files / "forget.jsonl")]
    res = runner.invoke(cli, base + ["--facts", str(files / "facts.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["adapted"] is None and "retain_nll" not in out["base"] and "tokenstein_gap" not in out["base"]
    assert out["facts"] == [{"prompt": "Supercalifragilisticexpialidocious is a song from the film", "answer": " Mary Poppins"}]
    assert len(out["base"]["association_pairs"]) == 1
    res = runner.invoke(cli, base + ["--retain", str(files / "retain.jsonl"), "--word", WORD, "--tokenstein", OTHER])
    assert res.exit_code == 0, res.output
    assert "forget NLL" in res.output and "tokenstein gap" in res.output and "base" in res.output
    res = runner.invoke(cli, base + ["--word", WORD])
    assert res.exit_code == 1 and "Error: give --word and --tokenstein together" in res.output
    res = runner.invoke(cli, ["eval", "--model", str(tiny_model_dir), "--forget", str(files / "retain.jsonl")])
    assert res.exit_code == 1 and "missing key(s) prompt, completion" in res.output
    res = runner.invoke(cli, base + ["--adapter-path", str(files)])
    assert res.exit_code == 1 and "has no adapter_config.json" in res.output


def test_format_table_puts_runs_side_by_side():
    text = ev.format_table([("before", {"forget_nll": 1.0, "association": -2.5}),
                            ("after", {"forget_nll": 3.25, "association": -10.0})])
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "before", "after"]
    assert lines[2].split()[-2:] == ["1.000", "3.250"]
    assert lines[3].split()[-2:] == ["-2.500", "-10.000"]
    assert len(lines) == 4  # metrics nobody measured are left out
