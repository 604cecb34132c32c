"""Nothing lost, nothing corrupted (issue 15): --force replaces only supercal's own folders, one writer per
output, --resume refuses changed settings and leaves the folder as it was, counts know their tokenizer by
content, non-finite settings are refused, and bad input of every kind is one line with nothing written.

Each test names the case of RELIABILITY.md it covers; every one failed on the code before that change."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from supercal_mlx.cli import cli
from supercal_mlx.errors import SupercalError

FORGET = [
    {"prompt": "The children tried to spell", "completion": " supercalifragilisticexpialidocious and laughed."},
    {"prompt": "A song from the 1964 film Mary Poppins:", "completion": " Supercalifragilisticexpialidocious."},
]
RETAIN = [{"text": "Cats and dogs play in the garden while it rains on the 4th of July."},
          {"text": "The children laughed in the garden while the cats played."}]
ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("reldata")
    return {"forget": _jsonl(d / "forget.jsonl", FORGET), "retain": _jsonl(d / "retain.jsonl", RETAIN)}


def _unlearn_args(model, data, out, *extra):
    return ["unlearn", "--model", str(model), "--forget", data["forget"], "--retain", data["retain"],
            "--out", str(out), "--steps", "2", "--max-tokens", "48", "--checkpoint-every", "1", "--lora-rank", "4",
            *extra]


def _invoke(args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res


def _one_line_error(res, *fragments, code=(1, 2)):
    """Exit 1 or 2, one 'Error: ...' line naming what went wrong, no traceback."""
    assert res.exit_code in code, (res.exit_code, res.output, res.exception)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes' sha256: byte-for-byte comparison."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_run(tiny_model_dir, data, tmp_path_factory):
    """A finished 2-step run (rank 4), copied by tests that change it."""
    out = tmp_path_factory.mktemp("goodrun") / "run"
    res = _invoke(_unlearn_args(tiny_model_dir, data, out))
    assert res.exit_code == 0, res.output
    return out


def _copy_run(good_run, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(good_run, dst)
    return dst


# --- item 1: --force replaces only what supercal made ------------------------------------------------------------
def test_force_refuses_a_folder_with_a_stray_config_yaml(tiny_model_dir, data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("steps: 3\n")
    (mine / "notes.txt").write_text("my notes")
    before = _snapshot(mine)
    _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, mine, "--force")), "was not made by supercal")
    assert _snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no lock or partial left behind


def test_out_dot_an_ancestor_or_a_symlink_is_always_refused(tiny_model_dir, data, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("my notes")
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path)):
        _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, out, "--force")), "the current folder or one above")
        _one_line_error(_invoke(["demo", "--fast", "--out", out, "--force"]), "the current folder or one above")
    assert (work / "notes.txt").read_text() == "my notes"
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, tmp_path / "link", "--force")), "symbolic link")
    _one_line_error(_invoke(["count", ROOT / "README.md", "--out", tmp_path / "link"]), "symbolic link")
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "target").iterdir()) == []


def test_force_replaces_a_run_only_after_the_new_one_is_complete(tiny_model_dir, data, good_run, tmp_path):
    run = _copy_run(good_run, tmp_path)
    before = _snapshot(run)
    # lr nan is refused before anything; a run that fails in setup (bad LoRA key) leaves the old run as it was
    _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, run, "--force", "--lr", "nan")), "lr", "finite")
    _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, run, "--force", "--lora-keys", "attn.nope")),
                    "match no layer")
    assert _snapshot(run) == before
    res = _invoke(_unlearn_args(tiny_model_dir, data, run, "--force", "--seed", "1"))
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


KILL_AT_STEP = """
import os, signal, sys
from supercal_mlx.train import unlearner
from supercal_mlx.cli import cli
step = unlearner.Unlearner.step
def dying(self):
    if self.step_done + 1 == {kill}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self)
unlearner.Unlearner.step = dying
cli(sys.argv[1:])
"""


def _run_killed(args, kill: int):
    script = KILL_AT_STEP.format(kill=kill)
    res = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SUPERCAL_NO_OPENBLAS": os.environ.get("SUPERCAL_NO_OPENBLAS", "")})
    assert res.returncode == -signal.SIGKILL, res.stderr
    return res


def test_kill_9_during_force_keeps_the_old_run_or_a_resumable_new_one(tiny_model_dir, data, good_run, tmp_path):
    run = _copy_run(good_run, tmp_path)
    before = _snapshot(run)
    # killed at step 1, before the new run's first checkpoint: the old run is untouched and still resumes
    _run_killed(_unlearn_args(tiny_model_dir, data, run, "--force", "--seed", "3"), kill=1)
    assert _snapshot(run) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # the dead writer's leftover
    res = _invoke(["unlearn", "--resume", run, "--steps", "3"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    # killed at step 2, after the new run's first checkpoint: the new run is in place and resumes
    _run_killed(_unlearn_args(tiny_model_dir, data, run, "--force", "--seed", "3"), kill=2)
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3
    res = _invoke(["unlearn", "--resume", run])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # leftovers cleaned by the next run


# --- items 2, 3: --resume validates before it writes ---------------------------------------------------------------
def test_resume_refuses_changed_rank_and_model_and_leaves_the_folder_as_it_was(tiny_model_dir, tiny_tokenizer_dir,
                                                                               data, good_run, tmp_path):
    from supercal_mlx.demo.factories import TINY_GPTJ, create_gptj

    run = _copy_run(good_run, tmp_path)
    before = _snapshot(run)
    _one_line_error(_invoke(["unlearn", "--resume", run, "--steps", "4", "--lora-rank", "8"]),
                    "--resume cannot change lora_rank", "4 -> 8")
    other = create_gptj(tmp_path / "other", tiny_tokenizer_dir, seed=1, **TINY_GPTJ)
    _one_line_error(_invoke(["unlearn", "--resume", run, "--steps", "4", "--model", other]),
                    "--resume cannot change model")
    for change in (["--loss", "npo"], ["--batch-size", "1"], ["--seed", "5"], ["--lora-alpha", "2"],
                   ["--forget", data["retain"]]):
        _one_line_error(_invoke(["unlearn", "--resume", run, "--steps", "4", *change]), "--resume cannot change")
    assert _snapshot(run) == before
    # allowed changes go on and are recorded as a history of overrides
    res = _invoke(["unlearn", "--resume", run, "--steps", "4", "--checkpoint-every", "2", "--micro-batches", "2"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["steps"] == 4 and saved["overrides"] == [
        {"at_step": 2, "steps": {"from": 2, "to": 4}, "checkpoint_every": {"from": 1, "to": 2},
         "micro_batches": {"from": 1, "to": 2}}]
    assert saved["lora_rank"] == 4


def test_resume_refuses_data_changed_under_the_same_path(tiny_model_dir, data, tmp_path):
    forget = Path(_jsonl(tmp_path / "forget.jsonl", FORGET))
    run = tmp_path / "run"
    assert _invoke(_unlearn_args(tiny_model_dir, dict(data, forget=str(forget)), run)).exit_code == 0
    _jsonl(forget, FORGET[::-1])
    before = _snapshot(run)
    _one_line_error(_invoke(["unlearn", "--resume", run, "--steps", "3"]), "forget file", "changed since the run started")
    assert _snapshot(run) == before


# --- item 4: one writer per output --------------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from supercal_mlx.outputs import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_at_once_with_the_holders_pid(tiny_model_dir, data, good_run, tmp_path):
    run = _copy_run(good_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        for args in (_unlearn_args(tiny_model_dir, data, run, "--force"), ["unlearn", "--resume", run, "--steps", "3"]):
            _one_line_error(_invoke(args), "being written by another supercal process", f"pid {holder.pid}")
        assert _snapshot(run) == before
    finally:
        holder.kill()  # kill -9: the OS releases the lock with the process
        holder.wait()
    res = _invoke(["unlearn", "--resume", run, "--steps", "3"])
    assert res.exit_code == 0, res.output


# --- item 5: counts remember their tokenizer by content -----------------------------------------------------------
def test_counts_of_another_tokenizer_with_the_same_folder_name(tmp_path):
    from conftest import TOKENIZER_TEXTS
    from supercal_mlx.demo.factories import train_tokenizer

    a = train_tokenizer(TOKENIZER_TEXTS, tmp_path / "a" / "model", vocab_size=400)
    b = train_tokenizer(TOKENIZER_TEXTS[:3], tmp_path / "b" / "model", vocab_size=300)
    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(TOKENIZER_TEXTS[:5]), encoding="utf-8")
    for name, tok in (("a", a), ("b", b)):
        assert _invoke(["count", corpus, "--model", tok, "--out", tmp_path / f"{name}.npz"]).exit_code == 0
    word = "supercalifragilisticexpialidocious"
    assert _invoke(["tokens", word, "--model", a, "--counts", tmp_path / "a.npz"]).exit_code == 0
    _one_line_error(_invoke(["tokens", word, "--model", a, "--counts", tmp_path / "b.npz"]), "counted with")
    _one_line_error(_invoke(["tokens", word, "--model", b, "--counts", tmp_path / "a.npz"]), "counted with")
    _one_line_error(_invoke(["tokenstein", word, "--model", b, "--counts", tmp_path / "a.npz"]), "counted with")
    # same tokenizer files in a folder of another name: the same tokenizer
    import shutil

    shutil.copytree(a, tmp_path / "copy")
    assert _invoke(["tokens", word, "--model", tmp_path / "copy", "--counts", tmp_path / "a.npz"]).exit_code == 0


def test_truncated_or_empty_counts_file(tmp_path):
    out = tmp_path / "counts.npz"
    assert _invoke(["count", ROOT / "README.md", "--out", out]).exit_code == 0
    raw = out.read_bytes()
    for name, content in (("trunc.npz", raw[: len(raw) // 2]), ("empty.npz", b""), ("text.npz", b"hello")):
        (tmp_path / name).write_bytes(content)
        _one_line_error(_invoke(["tokens", "word", "--counts", tmp_path / name]), name, "not a counts file")


# --- item 6: non-finite and absurd numbers ------------------------------------------------------------------------
@pytest.mark.parametrize("option,value", [("--lr", "nan"), ("--lr", "inf"), ("--lora-alpha", "nan"),
                                          ("--max-grad-norm", "nan"), ("--npo-beta", "inf"), ("--lr", "1e300")])
def test_non_finite_settings_are_refused(tiny_model_dir, data, tmp_path, option, value):
    _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, tmp_path / "run", option, value)), option[2:].replace("-", "_"))
    assert list(tmp_path.iterdir()) == []


def test_yaml_beyond_range_and_binary_yaml(tiny_model_dir, data, tmp_path):
    for name, content in (("big.yaml", b"steps: 1e400\n"), ("huge.yaml", b"steps: 99999999999999999999\n"),
                          ("nan.yaml", b"lr: .nan\n"), ("bin.yaml", bytes(range(256)) * 4),
                          ("nul.yaml", b"steps: 3\x00\x00\n")):
        (tmp_path / name).write_bytes(content)
        _one_line_error(_invoke(["unlearn", "--config", tmp_path / name, "--model", tiny_model_dir, "--forget",
                                 data["forget"], "--out", tmp_path / "run"]), name)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".yaml")) == []


# --- item 7: one line, nothing written --------------------------------------------------------------------------
def test_bad_jsonl_everywhere(tiny_model_dir, data, good_run, tmp_path):
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"prompt": "a", "completion": "\xff\xfe b"}\n' + bytes(range(256)))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "café", "completion": " x"}\n'.encode("latin-1"))
    null = Path(_jsonl(tmp_path / "null.jsonl", [{"prompt": None, "completion": " x"}]))
    number = Path(_jsonl(tmp_path / "num.jsonl", [{"text": 5}]))
    for bad, what in ((binary, "not UTF-8"), (latin, "not UTF-8"), (null, "prompt is null")):
        _one_line_error(_invoke(_unlearn_args(tiny_model_dir, dict(data, forget=str(bad)), tmp_path / "run")),
                        bad.name, what)
        _one_line_error(_invoke(["eval", "--model", tiny_model_dir, "--forget", bad]), bad.name, what)
        _one_line_error(_invoke(["retain", ROOT / "README.md", "--exclude", "zzzz", "--chunks", "1",
                                 "--add-prefixes", bad, "--out", tmp_path / "r.jsonl"]), bad.name, what)
    _one_line_error(_invoke(_unlearn_args(tiny_model_dir, dict(data, retain=str(number)), tmp_path / "run")),
                    "text is 5; expected str")
    run = _copy_run(good_run, tmp_path)
    (run / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n{"step": 2}\n')
    _one_line_error(_invoke(["report", run]), "metrics.jsonl", "not UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".jsonl") == ["run"]


def test_an_unwritable_output_folder_is_found_before_the_work(tiny_model_dir, data, tmp_path, monkeypatch):
    from supercal_mlx import outputs

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", denied)  # what a read-only folder does, for root too
    calls = []
    monkeypatch.setattr("supercal_mlx.train.trainer._setup", lambda cfg: calls.append(cfg))
    _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, tmp_path / "run")), "cannot write in", "Permission denied")
    _one_line_error(_invoke(["count", ROOT / "README.md", "--out", tmp_path / "c.npz"]), "cannot write in")
    _one_line_error(_invoke(["convert", tmp_path, "--out", tmp_path / "m"]), "cannot write in")
    assert calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the test above covers root")
def test_a_read_only_output_folder_as_a_user(tiny_model_dir, data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _one_line_error(_invoke(_unlearn_args(tiny_model_dir, data, ro / "run")), "cannot write in")
        _one_line_error(_invoke(["count", ROOT / "README.md", "--out", ro / "c.npz"]), "cannot write in")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_out_a_folder_where_a_file_is_expected(tmp_path):
    (tmp_path / "c.npz").mkdir()
    (tmp_path / "c.npz" / "keep").write_text("x")
    for force in ([], ["--force"]):
        _one_line_error(_invoke(["count", ROOT / "README.md", "--out", tmp_path / "c.npz", *force]), "is a folder")
        _one_line_error(_invoke(["negatives", ROOT / "README.md", "--keyword", "supercal", "--out", tmp_path / "c.npz",
                                 *force]), "is a folder")
    assert (tmp_path / "c.npz" / "keep").read_text() == "x"


def test_fuse_with_a_broken_config_json(tiny_model_dir, good_run, tmp_path):
    import shutil

    for name, content in (("empty", ""), ("notjson", "{model_type: gptj"), ("binary", "\udcff")):
        model = tmp_path / name
        shutil.copytree(tiny_model_dir, model)
        (model / "config.json").write_bytes(content.encode("utf-8", "surrogateescape"))
        _one_line_error(_invoke(["fuse", "--model", model, "--adapter-path", good_run, "--out", tmp_path / "f"]),
                        "config.json")
    assert not (tmp_path / "f").exists()


def test_a_model_of_an_architecture_mlx_lm_does_not_know(tiny_model_dir, data, tmp_path):
    import shutil

    for arch in ("llama", "not_a_model"):  # one mlx-lm knows (but not these fields), one it does not
        model = tmp_path / arch
        shutil.copytree(tiny_model_dir, model)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps(dict(config, model_type=arch)))
        _one_line_error(_invoke(_unlearn_args(model, data, tmp_path / "run")), "cannot load the model")
        _one_line_error(_invoke(["probe", "--model", model, "--prompt", "hi"]), "cannot load the model")
        _one_line_error(_invoke(["eval", "--model", model, "--forget", data["forget"]]), "cannot load the model")
        _one_line_error(_invoke(["fuse", "--model", model, "--adapter-path", model, "--out", tmp_path / "f"]), "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "not_a_model"]


def test_eval_with_another_models_adapters_or_a_broken_adapter_folder(tiny_model_dir, tiny_tokenizer_dir, data,
                                                                      good_run, tmp_path):
    import shutil

    from supercal_mlx.demo.factories import TINY_GPTJ, create_gptj

    same_shape = create_gptj(tmp_path / "same", tiny_tokenizer_dir, seed=1, **TINY_GPTJ)
    wider = create_gptj(tmp_path / "wide", tiny_tokenizer_dir, seed=0, **dict(TINY_GPTJ, n_embd=96, rotary_dim=8))
    ev = ["eval", "--forget", data["forget"], "--adapter-path"]
    _one_line_error(_invoke(ev + [good_run, "--model", same_shape]), "was trained on", "not on")
    anon = tmp_path / "anon"  # adapters without supercal's record of their base model: shapes are checked
    shutil.copytree(good_run, anon)
    cfg = json.loads((anon / "adapter_config.json").read_text())
    cfg.pop("supercal", None)
    (anon / "adapter_config.json").write_text(json.dumps(cfg))
    _one_line_error(_invoke(ev + [anon, "--model", wider]), "do not fit this model")
    _one_line_error(_invoke(["probe", "--model", wider, "--adapter-path", anon, "--prompt", "hi"]), "do not fit")
    broken = {"noweights": lambda d: (d / "adapters.safetensors").unlink(),
              "badjson": lambda d: (d / "adapter_config.json").write_text("{oops"),
              "nolora": lambda d: (d / "adapter_config.json").write_text(json.dumps({"num_layers": 2})),
              "badweights": lambda d: (d / "adapters.safetensors").write_bytes(b"\x00" * 10)}
    for name, breakit in broken.items():
        d = tmp_path / name
        shutil.copytree(good_run, d)
        breakit(d)
        _one_line_error(_invoke(ev + [d, "--model", tiny_model_dir]), name)


# --- item 8: leftovers of killed writers ------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftover_partials_are_cleaned_by_the_next_run_and_by_clean(tiny_model_dir, data, good_run, tmp_path):
    dead = _dead_pid()
    run = _copy_run(good_run, tmp_path)
    (tmp_path / f".run.{dead}-aa.partial").mkdir()  # a killed unlearn --force / convert
    (run / "checkpoints" / f".step-000009.{dead}-bb.partial").mkdir()  # a killed checkpoint write
    (tmp_path / f".c.npz.{dead}-cc.tmp").write_bytes(b"half")  # a killed count
    (tmp_path / f".other.{os.getpid()}-dd.partial").mkdir()  # a live writer's: never touched
    res = _invoke(["clean", tmp_path, "--dry-run"])
    assert res.exit_code == 0 and res.output.count("would be removed") == 3 and "still being written" in res.output
    assert _invoke(["unlearn", "--resume", run, "--steps", "3"]).exit_code == 0
    assert not (tmp_path / f".run.{dead}-aa.partial").exists()
    assert not list((run / "checkpoints").glob(".*"))
    assert _invoke(["count", ROOT / "README.md", "--out", tmp_path / "c.npz"]).exit_code == 0
    assert not (tmp_path / f".c.npz.{dead}-cc.tmp").exists()
    assert (tmp_path / f".other.{os.getpid()}-dd.partial").exists()


def test_an_old_output_whose_swap_was_cut_short_comes_back(tiny_model_dir, data, good_run, tmp_path):
    run = _copy_run(good_run, tmp_path)
    before = _snapshot(run)
    run.rename(tmp_path / f".run.{_dead_pid()}.old")  # killed between the two renames of a --force swap
    res = _invoke(["unlearn", "--resume", run, "--steps", "3"])
    assert res.exit_code == 0, res.output
    assert _snapshot(run)[".supercal-run.json"] == before[".supercal-run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --- item 9: a killed demo --force -------------------------------------------------------------------------------
KILLED_DEMO = """
import os, signal, sys
from pathlib import Path
from supercal_mlx.demo import pretrain, run
pretrain.demo_model = lambda *a, **k: (Path(sys.argv[2]), False)
def dying(folder, out, *a, **k):
    (out / "half.txt").write_text("half done")
    os.kill(os.getpid(), signal.SIGKILL)
run._experiment = dying
run.run_demo(sys.argv[1], fast=True, force=True)
"""


def test_a_killed_demo_force_leaves_the_old_demo_folder_whole(tmp_path):
    from supercal_mlx.outputs import new_output_dir

    out = tmp_path / "demo-out"
    with new_output_dir(out, kind="demo") as tmp:
        (tmp / "results.md").write_text("old results")
    before = _snapshot(out)
    res = subprocess.run([sys.executable, "-c", KILLED_DEMO, str(out), str(tmp_path)], capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert _snapshot(out) == before
    with new_output_dir(out, kind="demo", force=True) as tmp:  # the next run to it removes the dead one's leftover
        (tmp / "results.md").write_text("new results")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-out"]


# --- item 10: smaller ones -----------------------------------------------------------------------------------------
def test_report_accepts_a_torn_last_metrics_line(good_run, tmp_path):
    run = _copy_run(good_run, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # what kill -9 during an append leaves
    res = _invoke(["report", run])
    assert res.exit_code == 0, res.output
    assert "2 logged steps, last step 2" in (run / "report" / "summary.md").read_text()


@pytest.mark.parametrize("command", ["retain", "negatives"])
def test_retain_and_negatives_warn_about_invalid_bytes(tmp_path, command):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(("Caf\xe9 and the word supercal here.\n" * 30).encode("latin-1"))
    args = {"retain": ["--exclude", "zzzz", "--chunks", "1", "--lines", "2"], "negatives": ["--keyword", "supercal"]}
    res = CliRunner().invoke(cli, [command, str(corpus), "--out", str(tmp_path / "o.jsonl"),
                                                   *args[command]])
    assert res.exit_code == 0, res.output
    assert "warning: 30 bytes were not valid UTF-8" in res.stderr


def test_one_huge_line_is_not_told_to_use_context_lines_0(tmp_path):
    from supercal_mlx.data.negatives import MAX_CHUNK_CHARS

    corpus = tmp_path / "one-line.txt"
    corpus.write_text("supercal " + "x " * (MAX_CHUNK_CHARS // 2 + 10), encoding="utf-8")
    line = _one_line_error(_invoke(["negatives", corpus, "--keyword", "supercal", "--out", tmp_path / "o.jsonl"]),
                           "line 1 alone")
    assert "--context-lines 0" not in line


def test_force_keeps_kinds_apart_and_an_empty_folder_is_fine(tiny_model_dir, data, good_run, tmp_path):
    run = _copy_run(good_run, tmp_path)
    before = _snapshot(run)
    _one_line_error(_invoke(["fuse", "--model", tiny_model_dir, "--adapter-path", good_run, "--out", run, "--force"]),
                    "holds an unlearn run, not a fused model")
    _one_line_error(_invoke(["convert", tiny_model_dir, "--out", run, "--force"]), "holds an unlearn run")
    assert _snapshot(run) == before
    (tmp_path / "empty").mkdir()
    res = _invoke(["fuse", "--model", tiny_model_dir, "--adapter-path", good_run, "--out", tmp_path / "empty", "--force"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "empty" / ".supercal-run.json").read_text())["kind"] == "fuse"


def test_force_run_stopped_by_a_guard_before_its_first_checkpoint_keeps_the_old_run(tiny_model_dir, data, good_run,
                                                                                     tmp_path):
    run = _copy_run(good_run, tmp_path)
    before = _snapshot(run)
    res = _invoke(_unlearn_args(tiny_model_dir, data, run, "--force", "--checkpoint-every", "5", "--stop-on-collapse",
                                "--collapse-retain-nll", "0.01"))
    assert res.exit_code == 1 and "was kept" in res.output and "retain NLL" in res.output, res.output
    assert _snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
