"""supercal report on a hand-written run folder: files exist, PNGs are valid, the summary has the numbers."""

from __future__ import annotations

import json
import os
import sys

import pytest

from supercal_mlx.errors import SupercalError
from supercal_mlx.runs.report import NO_PLOTS, make_report, plots_available

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metric(step, loss, retain, gn, removed):
    return {"step": step, "epoch": step / 4, "loss": loss, "forget_nll": -loss, "retain_nll": retain,
            "grad_norm": gn, "learning_rate": 2e-4 * (1 - step / 10), "tokens": 1800, "step_seconds": 3.25,
            "peak_memory_gb": 7.5, "proj_cosine": {"0": 0.125 * step, "1": -0.5, "2": 0.0625},
            "proj_removed_pct": {"0": removed, "1": 25.0, "2": 0.7}}


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [metric(1, -1.61, 2.5, 1.42, 3.0), metric(2, -4.9, 2.75, 21.7, 12.5), metric(3, -77.9, 6.0, 784.0, 40.0)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probes = [{"step": s, "prompt": "Mary Poppins sang", "temperature": t, "sample": 1, "response": resp}
              for s, resps in ((2, ("a song | about words", "a word\nsaid loudly")),
                               (3, ("PlayPlayingPlayingPlayingPlayingPlaying", "the the the the the the the")))
              for t, resp in zip((0.01, 0.5), resps)]
    (run / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    (run / "config.yaml").write_text("loss: ga\nlr: 0.0002\nproject: per-layer\n")
    return run


def test_report_files_and_numbers(run_dir):
    from PIL import Image

    paths = make_report(run_dir)
    out = run_dir / "report"
    assert [p.name for p in paths] == ["loss.png", "nll.png", "grad_norm.png", "learning_rate.png",
                                       "proj_cosine.png", "proj_removed_pct.png", "summary.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted([".supercal-run.json"] + [p.name for p in paths])
    for p in paths[:-1]:
        assert p.read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.width >= 400 and im.height >= 100
    md = (out / "summary.md").read_text()
    assert "3 logged steps, last step 3, epoch 0.75." in md
    assert "project: per-layer" in md
    assert "| loss | -1.61 | -77.9 | -77.9 (3) | -1.61 (1) |" in md
    assert "| grad_norm | 1.42 | 784 | 1.42 (1) | 784 (3) |" in md
    assert "| retain_nll | 2.5 | 6 | 2.5 (1) | 6 (3) |" in md
    # per layer: mean over steps and last step
    assert "| 0 | 0.25 | 0.375 |" in md  # cosine of layer 0: (0.125 + 0.25 + 0.375) / 3
    assert "| 1 | -0.5 | -0.5 |" in md
    assert "| 0 | 18.5 | 40 |" in md  # removed %: (3 + 12.5 + 40) / 3
    assert "| 3 | -77.9 | 77.9 | 6 | 784 | 0.00014 | 1800 | 3.25 | 7.5 |" in md
    assert md.count("## Probes at step") == 2
    assert "## Probes at step 2\n\n0 of 2 responses degenerate." in md
    assert "## Probes at step 3\n\n2 of 2 responses degenerate." in md
    assert "| Mary Poppins sang | 0.01 | 1 | a song \\| about words |" in md
    assert "a word<br>said loudly" in md
    assert "![loss](loss.png)" in md


def test_report_without_projection_or_probes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": -2.0, "forget_nll": 2.0, "grad_norm": 0.5,
                                                   "learning_rate": 1e-4}) + "\n")
    paths = make_report(run, out=tmp_path / "rep")
    assert [p.name for p in paths] == ["loss.png", "nll.png", "grad_norm.png", "learning_rate.png", "summary.md"]
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "Probes" not in md and "Per layer" not in md and "retain_nll" not in md


def test_refusals(run_dir, tmp_path, monkeypatch):
    make_report(run_dir)
    with pytest.raises(SupercalError, match="--force"):
        make_report(run_dir)
    make_report(run_dir, force=True)
    with pytest.raises(SupercalError, match="metrics.jsonl"):
        make_report(tmp_path)
    (run_dir / "probes.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(SupercalError, match="probes.jsonl:1: missing key"):
        make_report(run_dir, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_without_matplotlib_the_summary_is_still_written(run_dir, tmp_path, monkeypatch):
    """A plain install (no plot extra): summary.md alone, equal to the full report's but for its Plots section."""
    with_plots = make_report(run_dir, out=tmp_path / "with-plots")
    full = (tmp_path / "with-plots" / "summary.md").read_text(encoding="utf-8")
    pngs = [p.name for p in with_plots if p.suffix == ".png"]
    assert len(pngs) == 6
    plots_section = "## Plots\n\n" + "\n".join(f"![{name[:-4]}]({name})" for name in pngs) + "\n"
    assert plots_section in full

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert not plots_available()
    assert make_report(run_dir) == [run_dir / "report" / "summary.md"]
    assert [n for n in os.listdir(run_dir / "report") if not n.startswith(".")] == ["summary.md"]  # no PNGs
    text = (run_dir / "report" / "summary.md").read_text(encoding="utf-8")
    assert text == full.replace(plots_section, f"## Plots\n\n{NO_PLOTS}\n")
    assert NO_PLOTS == "No plots: matplotlib is not installed (pip install 'supercal-mlx[plot]' draws them)."

    from click.testing import CliRunner

    from supercal_mlx.cli import cli

    result = CliRunner().invoke(cli, ["report", str(run_dir), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'cli' / 'summary.md'}\n" and result.stderr == NO_PLOTS + "\n"
    assert (tmp_path / "cli" / "summary.md").read_text(encoding="utf-8") == text


def test_cli(run_dir):
    from click.testing import CliRunner

    from supercal_mlx.cli import cli

    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert str(run_dir / "report" / "summary.md") in result.output
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 1 and "--force" in result.output
