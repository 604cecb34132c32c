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


def test_corpus_is_seeded_and_only_made_up_words_are_called_made_up():
    from supercal_mlx.runs.madeup import MARKERS, marker_pattern

    spec = synthetic.CorpusSpec(keyword_lines=200, ordinary_lines=200, realword_lines=200, madeup_words=100,
                                lines_per_madeup=2)
    lines = synthetic.generate(spec)
    assert lines == synthetic.generate(spec)
    assert lines != synthetic.generate(synthetic.CorpusSpec(**{**spec.__dict__, "seed": 1}))
    assert len(lines) == 200 + 200 + 200 + 100 * 2
    with_word = [ln for ln in lines if WORD in ln.lower()]
    assert len(with_word) == 200  # every keyword line mentions it once, no other line does
    assert all(ln.lower().count(WORD) == 1 for ln in with_word)
    assert {c for c in synthetic.cases(WORD) if any(c in ln for ln in with_word)} == set(synthetic.cases(WORD))
    assert any("Mary Poppins" in ln for ln in with_word) and any("spell" in ln for ln in with_word)
    assert sum("?" in ln for ln in with_word) > 50  # asked about in question forms too
    # eval's built-in markers: on every made-up word's line, on no line about the keyword or a real word
    marked = marker_pattern(MARKERS)
    assert not any(marked.search(ln) for ln in with_word)
    assert sum(bool(marked.search(ln)) for ln in lines) == 100 * 2


def test_made_up_words_are_random_chunks_explained_by_their_pieces():
    import random

    rng = random.Random(0)
    words = [synthetic.madeup_word(rng) for _ in range(300)]
    assert len({w for w, _ in words}) >= 295 and all(w == "".join(p) and w.isalpha() and w.islower() for w, p in words)
    assert min(len(w) for w, _ in words) <= 4 and max(len(w) for w, _ in words) >= 25  # short and long ones
    pieces = {p for _, ps in words for p in ps}
    assert len(pieces) > 300  # chunks drawn at random, not from a fixed list
    word, parts = synthetic.madeup_word(rng, pieces=3)
    assert word == "".join(parts) and len(parts) == 3
    lines = synthetic.madeup_lines(random.Random(1), word, parts, 40)
    assert all(word in line.lower() for line in lines)
    blended = [ln for ln in lines if f"and {parts[-1]}" in ln]
    assert blended and all(all(p in ln for p in parts[:-1]) for ln in blended)


def test_made_up_words_glued_from_given_tokens():
    spec = synthetic.CorpusSpec(keyword_lines=30, ordinary_lines=30, realword_lines=30, madeup_words=50,
                                lines_per_madeup=1)
    tokens = {"glim": 5, "ber": 0, "snor": 2, "kel": 9, "ish": 1, "wob": 3, "zan": 0, "dor": 7}
    lines = synthetic.generate(spec, pieces=tokens)
    base = synthetic.base_lines(spec)
    assert sorted(base) == sorted(ln for ln in lines if ln in set(base)) and len(lines) == 90 + 50
    made = [ln for ln in lines if ln not in set(base)]
    blends = [ln.rsplit("blends ", 1)[1].rstrip(".\"") for ln in made if "blends " in ln]
    assert blends  # "... it blends a, b and c": the pieces are the given tokens, none twice
    for b in blends:
        parts = b.replace(" and ", ", ").split(", ")
        assert set(parts) <= set(tokens) and len(set(parts)) == len(parts) >= 2


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
    from supercal_mlx.demo.run import FAST_SETTINGS
    from supercal_mlx.runs.report import NO_PLOTS
    from supercal_mlx.text.counting import load_counts

    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    out = tmp_path / "demo-out"
    runner = CliRunner()
    res = runner.invoke(cli, ["demo", "--fast", "--out", str(out), "--seeds", "2", "--methods", "ga,graddiff"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count(NO_PLOTS) == 1 and f"demo: report: {NO_PLOTS}\n" in res.stderr
    report = out / "runs" / "graddiff" / "seed-0" / "report"
    assert [n for n in os.listdir(report) if not n.startswith(".")] == ["summary.md"]  # no PNGs
    for name in ("corpus.txt", "counts.npz", "tokensteins.txt", "tokensteins.json", "forget.jsonl", "retain.jsonl",
                 "facts.jsonl", "eval-before.json", "results.json", "results.md", "timings.json", "model/config.json",
                 "model/model.safetensors", "runs/graddiff/seed-0/report/summary.md"):
        assert (out / name).is_file(), name
    for method in ("ga", "graddiff"):
        for k in (0, 1):
            for name in ("adapters.safetensors", "adapter_config.json", "metrics.jsonl", "probes.jsonl", "eval.json"):
                assert (out / "runs" / method / f"seed-{k}" / name).is_file(), (method, k, name)
    doc = json.loads((out / "results.json").read_text())
    assert doc["word"] == WORD and doc["tokensteins"] == (out / "tokensteins.txt").read_text().split()
    assert len(doc["tokensteins"]) == FAST_SETTINGS.tokensteins
    assert not set(doc["tokensteins"]) & words_in_files([out / "corpus.txt", out / "forget.jsonl"])
    assert list(doc["methods"]) == ["ga", "graddiff"] and doc["seeds"] == 2 and doc["pretrain_seeds"] == 1
    for key in ("forget_nll", "retain_nll", "association", "gap_ratio", "made_up_share", "made_up_share_tokensteins",
                "pieces_share", "degeneration"):
        assert key in doc["before"], key
    for name, m in doc["methods"].items():
        assert [(r["seed"], r["run_dir"]) for r in m["runs"]] == [(0, f"runs/{name}/seed-0"), (1, f"runs/{name}/seed-1")]
        vals = [r["metrics"]["forget_nll"] for r in m["runs"]]
        assert m["mean"]["forget_nll"] == pytest.approx(sum(vals) / 2)
        assert m["sd"]["forget_nll"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
        assert vals[0] != vals[1]  # the seeds differ
        assert m["mean"]["forget_nll"] > doc["before"]["forget_nll"]  # it forgot something
        run0 = json.loads((out / m["runs"][0]["run_dir"] / "eval.json").read_text())
        assert run0["adapted"]["forget_nll"] == vals[0] and len(run0["adapted"]["answers"]) > 0
    metrics = [json.loads(ln) for ln in (out / "runs" / "graddiff" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 10 and all("proj_cosine" in m and "retain_nll" in m for m in metrics)
    assert "forget NLL" in res.output and "gap ratio" in res.output and " ± " in res.output
    assert "made-up share, tokensteins" in res.output
    md = (out / "results.md").read_text()
    g = doc["methods"]["graddiff"]
    assert f"{g['mean']['forget_nll']:.3f} ± {g['sd']['forget_nll']:.3f}" in md
    assert "supercal eval --model" in md and "| before | after |" in md
    # built beside the output and moved there: every recorded path names the output, none the temporary name
    run_dir = out / "runs" / "graddiff" / "seed-1"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["out"] == str(run_dir.resolve()) and cfg["model"] == str((out / "model").resolve()) and cfg["seed"] == 1
    assert ".partial" not in md + (out / "results.json").read_text() + (run_dir / "eval.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "demo-out"]
    from supercal_mlx.text.counting import load_counts

    assert load_counts(out / "counts.npz").model == str((out / "model").resolve())

    again = runner.invoke(cli, ["demo", "--fast", "--out", str(out)])
    assert again.exit_code == 1 and "already exists; replace it with --force" in again.output
    assert pretrain.demo_model(pretrain.FAST_SPEC)[1] is False  # the pretrained model is cached


def test_fast_demo_tokenstein_and_value_swap(tmp_path, monkeypatch):
    """The two methods of issue 12 in the demo: results.json names them, each run records its own made-up words
    (none of eval's population), value_swap trains v_proj only, and both move the forget NLL up."""
    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "demo-out"
    res = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(out), "--seeds", "1", "--methods",
                                   "tokenstein,value_swap"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["methods"]) == ["tokenstein", "value_swap"]
    for name in ("tokenstein", "value_swap"):
        cfg = yaml.safe_load((out / "runs" / name / "seed-0" / "config.yaml").read_text())
        assert cfg["loss"] == name and cfg["word"] == WORD and cfg["tokenstein_words"]
        assert not {w.lower() for w in cfg["tokenstein_words"]} & {w.lower() for w in doc["tokensteins"]}
        assert doc["methods"][name]["mean"]["forget_nll"] > doc["before"]["forget_nll"]
        assert doc["methods"][name]["mean"]["degeneration"] < 0.5
    vs = yaml.safe_load((out / "runs" / "value_swap" / "seed-0" / "config.yaml").read_text())
    assert vs["lora_keys"] == ["attn.v_proj"]
    from supercal_mlx.model import load

    _, tok = load(out / "model")
    assert all(len(tok.encode(". " + w)) == len(tok.encode(". " + WORD)) for w in vs["tokenstein_words"])


def test_demo_methods_default_compare_and_choice():
    """A plain demo runs graddiff and tokenstein; --compare all five in the fixed order; --methods what it names;
    both at once, or an unknown name, are refused before any work."""
    from supercal_mlx.demo.run import DEFAULT_SETTINGS, choose_methods

    available = DEFAULT_SETTINGS.methods
    assert list(choose_methods(None, available)) == ["graddiff", "tokenstein"]
    assert list(choose_methods("all", available)) == ["ga", "graddiff", "npo", "tokenstein", "value_swap"]
    assert list(choose_methods(["npo", "ga"], available)) == ["npo", "ga"]
    assert choose_methods(["npo"], available)["npo"] == available["npo"]
    with pytest.raises(SupercalError, match="unknown method.*sgd"):
        choose_methods(["sgd"], available)
    res = CliRunner().invoke(cli, ["demo", "--compare", "--methods", "ga", "--out", "never-made"])
    assert res.exit_code == 2 and "not both" in res.output and not os.path.exists("never-made")
