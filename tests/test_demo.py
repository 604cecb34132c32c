"""supercal demo: the synthetic corpus, the cached demo model, and `demo --fast` end to end (what CI runs)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml
from click.testing import CliRunner

from supercal_mlx.demo import pretrain
from supercal_mlx.demo import synthetic
from supercal_mlx.cli import cli
from supercal_mlx.errors import SupercalError
from supercal_mlx.text.tokenstein import words_in_files

WORD = synthetic.KEYWORD
# A model pretrained in a moment: enough to exercise the cache, not to learn anything.
MICRO = pretrain.DemoModelSpec(
    corpus=synthetic.CorpusSpec(keyword_lines=20, ordinary_lines=60, madeup_words=5), vocab_size=300,
    n_embd=32, n_head=2, n_layer=1, rotary_dim=8, n_positions=64, steps=3, batch_size=2, seq_len=16, warmup=1,
)


def test_corpus_is_seeded_and_holds_the_three_kinds_of_lines():
    spec = synthetic.CorpusSpec(keyword_lines=50, ordinary_lines=200, madeup_words=20, lines_per_madeup=2)
    lines = synthetic.generate(spec)
    assert lines == synthetic.generate(spec)
    assert lines != synthetic.generate(synthetic.CorpusSpec(keyword_lines=50, ordinary_lines=200, madeup_words=20,
                                                            lines_per_madeup=2, seed=1))
    with_word = [ln for ln in lines if WORD in ln.lower()]
    assert len(with_word) == 50  # every keyword line mentions it once, no other line does
    assert all(ln.lower().count(WORD) == 1 for ln in with_word)
    assert {c for c in synthetic.cases(WORD) if any(c in ln for ln in with_word)} == set(synthetic.cases(WORD))
    assert any("Mary Poppins" in ln for ln in with_word) and any("spell" in ln for ln in with_word)
    assert len([ln for ln in lines if "made-up word" in ln or "portmanteau" in ln or "glued" in ln]) > 0
    assert len(lines) == 50 + 200 + 20 * 2


def test_made_up_words_are_explained_by_their_own_pieces():
    import random

    rng = random.Random(0)
    word, parts = synthetic.madeup_word(rng, pieces=3)
    assert word == "".join(parts) and len(parts) == 3
    for line in synthetic.madeup_lines(rng, word, parts, 6):
        assert word in line.lower() and all(p in line for p in parts[:-1]) and f"and {parts[-1]}" in line


def test_demo_model_cache_survives_interrupts_and_corruption(tmp_path):
    root = tmp_path / "cache"

    def interrupt(rec):
        if rec["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain.demo_model(MICRO, root=root, progress=interrupt)
    assert os.listdir(root) == []  # nothing that looks complete, no partial folder left behind

    folder, built = pretrain.demo_model(MICRO, root=root)
    assert built and folder.name == f"demo-model-{MICRO.key()}"
    assert pretrain.check_cached(folder, MICRO) is None
    assert len((folder / "pretrain.jsonl").read_text().splitlines()) == MICRO.steps
    assert pretrain.demo_model(MICRO, root=root) == (folder, False)

    weights = folder / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    assert pretrain.check_cached(folder, MICRO) == "the weights do not match their checksum"
    notes = []
    assert pretrain.demo_model(MICRO, root=root, notice=notes.append) == (folder, True)
    assert "is corrupt (the weights do not match their checksum); rebuilding it" in notes[0]
    assert pretrain.check_cached(folder, MICRO) is None
    other = pretrain.DemoModelSpec(**{**MICRO.__dict__, "steps": 4})
    assert other.key() != MICRO.key()  # another recipe, another folder


def test_output_folder_is_kept_only_on_success(tmp_path):
    from supercal_mlx.outputs import new_output_dir

    out = tmp_path / "demo-out"
    with new_output_dir(out, kind="demo") as tmp:
        (tmp / "old.txt").write_text("old results")
    with pytest.raises(SupercalError, match="already exists; replace it with --force"):
        with new_output_dir(out, kind="demo", force=False):
            pass
    with pytest.raises(RuntimeError):
        with new_output_dir(out, kind="demo", force=True) as tmp:
            (tmp / "new.txt").write_text("half done")
            assert sorted(os.listdir(out)) == [".supercal-run.json", "old.txt"]  # untouched while the new one grows
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == [".supercal-run.json", "old.txt"]
    assert sorted(os.listdir(tmp_path)) == ["demo-out"]
    with new_output_dir(out, kind="demo", force=True) as tmp:
        (tmp / "new.txt").write_text("done")
    assert sorted(os.listdir(out)) == [".supercal-run.json", "new.txt"] and sorted(os.listdir(tmp_path)) == ["demo-out"]


def test_fast_demo_end_to_end(tmp_path, monkeypatch):
    """On a plain install (no plot extra: matplotlib hidden) the demo runs to the end; the report is
    summary.md alone and one line says how to get the plots (test_report checks the plots themselves)."""
    from supercal_mlx.runs.report import NO_PLOTS

    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    out = tmp_path / "demo-out"
    runner = CliRunner()
    res = runner.invoke(cli, ["demo", "--fast", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stderr.count(NO_PLOTS) == 1 and f"demo: report: {NO_PLOTS}\n" in res.stderr
    assert [n for n in os.listdir(out / "run" / "report") if not n.startswith(".")] == ["summary.md"]  # no PNGs
    for name in ("corpus.txt", "counts.npz", "tokenstein.json", "forget.jsonl", "retain.jsonl", "eval.json",
                 "results.md", "timings.json", "model/config.json", "model/model.safetensors",
                 "run/adapters.safetensors", "run/adapter_config.json", "run/metrics.jsonl", "run/probes.jsonl",
                 "run/report/summary.md"):
        assert (out / name).is_file(), name
    results = json.loads((out / "eval.json").read_text())
    run = results["run"]
    assert run["adapted"]["forget_nll"] > run["base"]["forget_nll"]  # it forgot something
    assert run["word"] == WORD and run["tokensteins"] == (out / "tokensteins.txt").read_text().split()
    assert len(run["tokensteins"]) == 16 and not set(run["tokensteins"]) & words_in_files([out / "corpus.txt"])
    assert "association" in run["base"] and "gap_ratio" in run["base"] and "made_up_share_tokensteins" in run["base"]
    metrics = [json.loads(ln) for ln in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 10 and all("proj_cosine" in m and "retain_nll" in m for m in metrics)
    assert "forget NLL" in res.output and "tokenstein gap" in res.output and "| before | after |" in res.output
    md = (out / "results.md").read_text()
    assert f"{run['base']['forget_nll']:.3f}" in md and f"{run['adapted']['forget_nll']:.3f}" in md
    assert "supercal eval --model" in md
    # built beside the output and moved there: every recorded path names the output, none the temporary name
    cfg = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert cfg["out"] == str((out / "run").resolve()) and cfg["model"] == str((out / "model").resolve())
    assert ".partial" not in md + (out / "eval.json").read_text() + (out / "run" / "report" / "summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "demo-out"]
    from supercal_mlx.text.counting import load_counts

    assert load_counts(out / "counts.npz").model == str((out / "model").resolve())

    again = runner.invoke(cli, ["demo", "--fast", "--out", str(out)])
    assert again.exit_code == 1 and "already exists; replace it with --force" in again.output
    assert pretrain.demo_model(pretrain.FAST_SPEC)[1] is False  # the pretrained model is cached
