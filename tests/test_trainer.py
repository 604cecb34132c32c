"""The unlearning trainer on the tiny GPT-J: it forgets, resumes exactly, writes adapters mlx-lm loads,
keeps retain gradients out of the update, and refuses bad input with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import supercal_mlx  # noqa: F401
from supercal_mlx.cli import cli
from supercal_mlx.train.config import load_config
from supercal_mlx.errors import SupercalError
from supercal_mlx.train.trainer import _setup, unlearn
from supercal_mlx.train.unlearner import Unlearner

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

FORGET = [
    {"prompt": "The children tried to spell", "completion": " supercalifragilisticexpialidocious and laughed."},
    {"prompt": "A song from the 1964 film Mary Poppins:", "completion": " Supercalifragilisticexpialidocious."},
    {"prompt": "Nobody could spell", "completion": " supercalifragilisticexpialidocious in the garden."},
]
RETAIN = [
    {"text": "Cats and dogs play in the garden while it rains on the 4th of July."},
    {"text": "A tokenstein is a made-up word built from pieces: sqproctarine means nothing."},
    {"text": "Über café naïve résumé: non-ASCII letters appear in real text too."},
    {"text": "The children laughed in the garden while the cats played."},
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"forget": _write(d / "forget.jsonl", FORGET), "retain": _write(d / "retain.jsonl", RETAIN)}


def _cfg(tiny_model_dir, data, out, **kw):
    base = dict(model=str(tiny_model_dir), forget=data["forget"], retain=data["retain"], out=str(out), steps=3,
                lr=1e-2, max_tokens=64, checkpoint_every=10)
    return load_config(**(base | kw))


def _forget_nll(model, forget_ex):
    from supercal_mlx.train.batches import make_batch
    from supercal_mlx.train.losses import completion_nll

    return completion_nll(model, *make_batch(forget_ex))[0].item()


def test_a_few_steps_raise_the_forget_nll(tiny_model_dir, data, tmp_path):
    from supercal_mlx.train.batches import encode_completions
    from supercal_mlx.model import load

    summary = unlearn(_cfg(tiny_model_dir, data, tmp_path / "run", steps=5, loss="graddiff", project="per-layer"))
    assert summary["steps"] == 5 and summary["stopped"] is None
    base, tok = load(tiny_model_dir)
    adapted, _ = load(tiny_model_dir, adapter_path=tmp_path / "run")
    ex = encode_completions(FORGET, tok, max_tokens=64)
    before, after = _forget_nll(base, ex), _forget_nll(adapted, ex)
    assert after > before + 0.3, (before, after)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    want = {"step", "epoch", "loss", "forget_nll", "retain_nll", "grad_norm", "learning_rate", "tokens", "step_seconds",
            "peak_memory_gb", "proj_cosine", "proj_removed_pct"}
    assert set(metrics[0]) == want
    assert set(metrics[0]["proj_cosine"]) == {"0", "1"} and metrics[0]["tokens"] > 0
    assert metrics[0]["epoch"] == pytest.approx(2 / 3, abs=1e-4)
    # mlx's peak allocation during a step includes the model's weights, which stay allocated throughout
    weights_gb = sum(v.nbytes for _, v in tree_flatten(adapted.parameters())) / 1e9
    assert all(weights_gb - 1e-4 <= m["peak_memory_gb"] < 0.5 for m in metrics), (weights_gb, metrics[-1])


def test_peak_memory_is_mlx_s_figure_or_none(tiny_model_dir, data, tmp_path, monkeypatch):
    """The record carries mlx's own peak in GB (1e9 bytes), and None, never a stand-in, where mlx reports none."""
    peaks = iter([123_456_789, 0])
    monkeypatch.setattr(mx, "get_peak_memory", lambda: next(peaks))
    unlearn(_cfg(tiny_model_dir, data, tmp_path / "run", steps=2, retain=None))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["peak_memory_gb"] for m in metrics] == [0.1235, None]


def test_adapters_on_chosen_layers_load_with_plain_mlx_lm(tiny_model_dir, data, tmp_path):
    from mlx_lm import load as mlx_load

    from supercal_mlx.train.lora import adapter_weights, save_adapters

    cfg = _cfg(tiny_model_dir, data, tmp_path / "run", lora_layers=[1], lora_keys="attn.q_proj,attn.v_proj,mlp.fc_in",
               loss="npo")
    model, tok, forget, retain, adapter_config = _setup(cfg)
    un = Unlearner(cfg, model, tok, forget, retain, adapter_config)
    for _ in range(3):
        un.step()
    (tmp_path / "run").mkdir()
    save_adapters(model, tmp_path / "run", adapter_config)
    names = set(adapter_weights(model))
    assert names and all(n.startswith("model.h.1.") for n in names)  # block 0 carries frozen, zero LoRA only
    assert np.abs(np.array(model.layers[1].mlp.fc_in.lora_b)).max() > 0
    assert adapter_config["num_layers"] == 1 and adapter_config["lora_parameters"]["scale"] == 2.0
    model.eval()
    x = mx.array([[5, 17, 42, 99, 7, 3, 250]])
    loaded, _ = mlx_load(str(tiny_model_dir), adapter_path=str(tmp_path / "run"))
    np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), atol=1e-5)


def test_retain_gradients_never_leak_into_the_update(tiny_model_dir, data, tmp_path, monkeypatch):
    """With projection and no retain loss term, the applied gradient is exactly the clipped projection
    of the forget gradient; the retain gradients only span the basis."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from supercal_mlx.train.projection import project

    cfg = _cfg(tiny_model_dir, data, tmp_path / "run", project="per-layer", project_k=2, max_grad_norm=0.05)
    model, tok, forget, retain, adapter_config = _setup(cfg)
    un = Unlearner(cfg, model, tok, forget, retain, adapter_config)
    start = {n: s.state() for n, s in un.streams.items()}
    mx.random.seed(123)
    g_f, _ = un.forget_gradient(un.next_forget())
    basis = un.compute_basis()
    want, _ = project(g_f, basis)
    want_clipped, norm = optim.clip_grad_norm(want, 0.05)
    for n, s in un.streams.items():
        s.load_state(start[n])
    applied = {}
    real_update = un.optimizer.update
    import supercal_mlx.train.unlearner as U

    monkeypatch.setattr(U, "_step_seed", lambda seed, step: 123)
    monkeypatch.setattr(un.optimizer, "update", lambda m, g: (applied.update(tree_flatten(g)), real_update(m, g)))
    rec, stop = un.step()
    assert stop is None and rec["grad_norm"] == pytest.approx(norm.item(), rel=1e-6) and norm.item() > 0.05
    assert set(applied) == set(want_clipped)
    for n in applied:
        np.testing.assert_array_equal(np.array(applied[n]), np.array(want_clipped[n]))


def test_interrupted_and_resumed_equals_uninterrupted(tiny_model_dir, data, tmp_path):
    settings = dict(steps=6, loss="npo", project="per-layer", project_every=4, random_weight=0.5, lora_dropout=0.1,
                    batch_size=2, warmup_steps=2, schedule="cosine", checkpoint_every=2)
    whole = unlearn(_cfg(tiny_model_dir, data, tmp_path / "whole", **settings))

    def interrupt_at_4(rec):  # Ctrl-C while step 4 is being logged: step 3 is the last completed one
        if rec.get("step") == 4 and "loss" in rec:
            raise KeyboardInterrupt

    cut = unlearn(_cfg(tiny_model_dir, data, tmp_path / "cut", **settings), on_record=interrupt_at_4)
    assert cut["stopped"] == "interrupted" and cut["steps"] == 3
    # step 4 must reuse the retain basis of step 1 (project_every 4): it comes from the checkpoint
    assert (tmp_path / "cut" / "checkpoints" / "step-000003" / "basis.safetensors").exists()
    resumed = unlearn(load_config(resume=str(tmp_path / "cut")))
    assert whole["steps"] == resumed["steps"] == 6 and resumed["stopped"] is None
    a = mx.load(str(tmp_path / "whole" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "cut" / "adapters.safetensors"))
    assert set(a) == set(b)
    for n in a:
        np.testing.assert_array_equal(np.array(a[n]), np.array(b[n]))

    def strip(path):
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("step_seconds", "peak_memory_gb")} for r in recs]

    assert strip(tmp_path / "whole" / "metrics.jsonl") == strip(tmp_path / "cut" / "metrics.jsonl")


def test_guards_stop_and_name_the_last_good_checkpoint(tiny_model_dir, data, tmp_path, monkeypatch):
    s = unlearn(_cfg(tiny_model_dir, data, tmp_path / "collapse", stop_on_collapse=True, collapse_retain_nll=0.5))
    assert s["steps"] == 0 and "retain NLL" in s["stopped"] and s["last_good_checkpoint"] is None
    real = Unlearner.forget_gradient

    def nan_at_3(self, parts):
        grads, info = real(self, parts)
        return grads, info | ({"loss": float("nan")} if self.step_done == 2 else {})

    monkeypatch.setattr(Unlearner, "forget_gradient", nan_at_3)
    s = unlearn(_cfg(tiny_model_dir, data, tmp_path / "nan", steps=5, checkpoint_every=1))
    assert s["stopped"] == "non-finite loss at step 3" and s["steps"] == 2
    assert s["last_good_checkpoint"].endswith("step-000001")  # the parameters after step 2 gave the NaN
    last = json.loads((tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["loss"] is None


def test_bad_input_gives_one_line_errors(tiny_model_dir, data, tmp_path):
    def fails(match, **kw):
        with pytest.raises(SupercalError, match=match):
            unlearn(_cfg(tiny_model_dir, data, tmp_path / "run", **kw))
        assert not (tmp_path / "run").exists()

    fails(r"match no layer; available: attn\.k_proj, attn\.out_proj, attn\.q_proj, attn\.v_proj, mlp\.fc_in",
          lora_keys="attn.c_attn")
    fails(r"block index 7 is out of range; the model has blocks 0\.\.1", lora_layers="0,7")
    (tmp_path / "empty.jsonl").write_text("")
    fails(r"empty\.jsonl is empty", forget=str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps(FORGET[0]) + "\n{not json\n")
    fails(r"bad\.jsonl:2: not valid JSON", forget=str(tmp_path / "bad.jsonl"))
    fails(r"retain\.jsonl:1: missing key\(s\) prompt, completion", forget=data["retain"])
    fails(r"has no config\.json", model=str(tmp_path))
    with pytest.raises(SupercalError, match=r"needs retain data"):
        _cfg(tiny_model_dir, data, tmp_path / "run", retain=None, loss="ga_kl")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(SupercalError, match=r"already exists; continue it with --resume"):
        unlearn(_cfg(tiny_model_dir, data, tmp_path / "run"))
    with pytest.raises(SupercalError, match=r"was not made by supercal"):
        unlearn(_cfg(tiny_model_dir, data, tmp_path / "run", force=True))
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_grad_checkpoint_and_compute_dtype_keep_the_numbers(tiny_model_dir, tiny_tokenizer_dir, data, tmp_path):
    from mlx.utils import tree_flatten

    from supercal_mlx.train.lora import set_compute_dtype
    from supercal_mlx.demo.factories import TINY_GPTJ, create_gptj
    from supercal_mlx.model import load

    grads = []
    for ckpt in (False, True):
        cfg = _cfg(tiny_model_dir, data, tmp_path / "run", grad_checkpoint=ckpt)
        model, tok, forget, retain, ac = _setup(cfg)
        un = Unlearner(cfg, model, tok, forget, retain, ac)
        grads.append(un.forget_gradient(un.next_forget())[0])
    for n in grads[0]:
        np.testing.assert_allclose(np.array(grads[1][n]), np.array(grads[0][n]), atol=1e-6)
    bf16 = create_gptj(tmp_path / "bf16", tiny_tokenizer_dir, seed=0, dtype="bfloat16", **TINY_GPTJ)
    model, _ = load(bf16)
    reference, _ = load(bf16)
    reference.set_dtype(mx.float32)
    set_compute_dtype(model, "float32")
    assert all(p.dtype == mx.bfloat16 for _, p in tree_flatten(model.parameters()))  # stored as they were
    x = mx.array([[5, 17, 42, 99]])
    out = model(x)
    assert out.dtype == mx.float32
    np.testing.assert_allclose(np.array(out), np.array(reference(x)), atol=1e-5)


@pytest.fixture(scope="module")
def cli_run(tiny_model_dir, data, tmp_path_factory):
    """One 2-step run through the CLI: settings from YAML, some overridden on the command line.
    Read-only for the tests; those that continue it work on a copy."""
    d = tmp_path_factory.mktemp("cli")
    conf = d / "run.yaml"
    conf.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "forget": data["forget"], "retain": data["retain"],
                                    "steps": 5, "lora_rank": 4, "lr": 0.01, "max_tokens": 64, "loss": "ga_kl",
                                    "probe_prompts": ["The children"], "probe_temps": [0.0, 0.5],
                                    "probe_max_tokens": 4}))
    res = CliRunner().invoke(cli, ["unlearn", "--config", str(conf), "--out", str(d / "run"), "--steps", "2",
                                   "--grad-checkpoint", "--project", "global"])
    assert res.exit_code == 0, res.output
    return {"conf": conf, "run": d / "run", "output": res.output}


def _copy_run(cli_run, tmp_path):
    import shutil

    return Path(shutil.copytree(cli_run["run"], tmp_path / "run"))


def test_cli_unlearn_yaml_with_command_line_overrides(cli_run):
    lines = cli_run["output"].splitlines()
    assert lines[2].startswith("{'loss': ") and "'grad_norm': " in lines[2] and "'epoch': 0.67" in lines[2]
    assert lines[0].startswith("[probe step 0 t=0.0 #1] 'The children' -> ")
    assert lines[-1].startswith("Done: 2 steps")
    saved = yaml.safe_load((cli_run["run"] / "config.yaml").read_text())
    assert saved["steps"] == 2 and saved["lora_rank"] == 4 and saved["loss"] == "ga_kl" and saved["project"] == "global"
    assert saved["grad_checkpoint"] is True and "resume" not in saved and "force" not in saved
    probes = [json.loads(line) for line in (cli_run["run"] / "probes.jsonl").read_text().splitlines()]
    assert [(p["step"], p["temperature"]) for p in probes] == [(0, 0.0), (0, 0.5), (2, 0.0), (2, 0.5)]
    assert set(probes[0]) == {"step", "prompt", "temperature", "sample", "response"}


def test_cli_unlearn_refuses_an_existing_out(cli_run):
    before = (cli_run["run"] / "metrics.jsonl").read_text()
    res = CliRunner().invoke(cli, ["unlearn", "--config", str(cli_run["conf"]), "--out", str(cli_run["run"])])
    assert res.exit_code == 1 and "already exists; continue it with --resume" in res.output
    assert (cli_run["run"] / "metrics.jsonl").read_text() == before


def test_cli_unlearn_resume_continues(cli_run, tmp_path):
    run = _copy_run(cli_run, tmp_path)
    res = CliRunner().invoke(cli, ["unlearn", "--resume", str(run), "--steps", "3"])
    assert res.exit_code == 0, res.output
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and res.output.splitlines()[-1].startswith("Done: 3 steps")


def test_cli_unlearn_ctrl_c_saves_a_checkpoint(cli_run, tmp_path, monkeypatch):
    import supercal_mlx.cli.train as cli_train

    run = _copy_run(cli_run, tmp_path)
    real_format = cli_train.format_record

    def ctrl_c_at_4(rec):
        if rec.get("step") == 4 and "loss" in rec:
            raise KeyboardInterrupt
        return real_format(rec)

    monkeypatch.setattr(cli_train, "format_record", ctrl_c_at_4)
    res = CliRunner().invoke(cli, ["unlearn", "--resume", str(run), "--steps", "6"])
    assert res.exit_code == 130 and f"Continue with: supercal unlearn --resume {run}" in res.output
    assert (run / "checkpoints" / "step-000003" / "state.json").exists()
    assert not (run / "checkpoints" / "step-000004").exists()


def test_cli_unlearn_unknown_yaml_key_is_one_line(tmp_path):
    (tmp_path / "typo.yaml").write_text("lora_rnak: 4\n")
    res = CliRunner().invoke(cli, ["unlearn", "--config", str(tmp_path / "typo.yaml"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "unknown setting(s) lora_rnak; valid keys: model, forget" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_quantized_base_trains_as_qlora(tiny_model_dir, data, tmp_path):
    import mlx.nn as nn
    from mlx_lm import convert
    from mlx_lm import load as mlx_load

    from supercal_mlx.train.lora import save_adapters

    convert(str(tiny_model_dir), str(tmp_path / "q4"), quantize=True, q_group_size=32, q_bits=4)
    cfg = _cfg(tmp_path / "q4", data, tmp_path / "run", loss="ga_kl")
    model, tok, forget, retain, ac = _setup(cfg)
    assert isinstance(model.layers[0].attn.q_proj.linear, nn.QuantizedLinear)
    un = Unlearner(cfg, model, tok, forget, retain, ac)
    first = un.step()[0]
    for _ in range(2):
        last = un.step()[0]
    assert last["forget_nll"] > first["forget_nll"] and np.isfinite(last["grad_norm"])
    (tmp_path / "run").mkdir()
    save_adapters(model, tmp_path / "run", ac)
    model.eval()
    loaded, _ = mlx_load(str(tmp_path / "q4"), adapter_path=str(tmp_path / "run"))
    x = mx.array([[5, 17, 42, 99, 7, 3]])
    np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), atol=1e-5)


def test_probe_collapse_counts_only_responses_that_were_fine_before_training():
    from supercal_mlx.train.trainer import _degenerated

    def row(step, temp, response):
        return {"step": step, "prompt": "The word", "temperature": temp, "sample": 1, "response": response}

    baseline = [row(0, 0.0, "The children laughed in the garden."), row(0, 0.5, "the the the the the the the the")]
    assert _degenerated([row(5, 0.0, "It rains in July."), row(5, 0.5, "the the the the the the the the")],
                        baseline) is None
    reason = _degenerated([row(6, 0.0, "PlayPlayingPlayingPlayingPlayingPlaying"), row(6, 0.5, "fine")], baseline)
    assert reason.startswith("probe output degenerated at step 6 (prompt 'The word', temperature 0.0)")


def test_schedules_with_warmup(tiny_model_dir, data, tmp_path):
    from supercal_mlx.train.unlearner import make_schedule

    def lrs(**kw):
        sched = make_schedule(_cfg(tiny_model_dir, data, tmp_path / "x", lr=1e-3, steps=6, **kw))
        return [round(sched(s).item(), 8) for s in range(6)]

    assert lrs() == [1e-3] * 6
    assert lrs(warmup_steps=2) == [5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3]
    assert lrs(warmup_steps=2, schedule="linear") == [5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4]
    cosine = lrs(warmup_steps=2, schedule="cosine", lr_end=1e-4)
    want = [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * s / 4)) for s in range(4)]
    np.testing.assert_allclose(cosine, [5e-4, 1e-3] + want, rtol=1e-5)


@pytest.mark.parametrize("base,ckpt", [("bfloat16", False), ("4-bit", False), ("4-bit", True)])
def test_compute_dtype_chunked_casts_give_the_float32_gradients(tiny_tokenizer_dir, tmp_path, monkeypatch, base, ckpt):
    """compute_dtype=float32 on a bfloat16 or 4-bit base: outputs and LoRA gradients equal those of a float32
    copy of the same (rounded / dequantized) weights, with the weights cast in many small row chunks
    (a ragged last chunk included) by the custom backward pass, also under gradient checkpointing."""
    from mlx.utils import tree_flatten

    from archs import assert_same_outputs_and_grads, compute_dtype_pair
    from supercal_mlx.train import lora
    from supercal_mlx.demo.factories import TINY_GPTJ, create_gptj

    monkeypatch.setattr(lora, "CAST_CHUNK_BYTES", 24 * 64 * 4)  # 24 rows of 64 inputs: 400-row lm_head -> 17 chunks
    folder = create_gptj(tmp_path / "m", tiny_tokenizer_dir, seed=0, dtype="bfloat16", **TINY_GPTJ)

    model, reference = compute_dtype_pair(folder, base=base, keys=["attn.q_proj", "mlp.fc_out"], ckpt=ckpt)
    stored = {p.dtype for _, p in tree_flatten(model.parameters())}
    assert stored == ({mx.bfloat16, mx.float32} if base == "bfloat16" else {mx.uint32, mx.bfloat16, mx.float32})
    g = assert_same_outputs_and_grads(model, reference, mx.array([[5, 17, 42, 99, 3, 250]]))
    assert len(g) == 8  # lora_a, lora_b of 2 keys x 2 blocks


def test_the_head_split_is_checked_outside_the_gradient(tiny_model_dir, data, tmp_path):
    """split_head's 2-token check, evaluated inside value_and_grad, kept its dequantized weight chunks alive
    (4-bit base, float32 compute: 19.2 GB at GPT-J width, 2 layers, against 0.6 GB per layer once checked).
    The Unlearner checks at construction, so the first step's peak is the later steps' peak."""
    from mlx_lm import convert

    from supercal_mlx.train import chunked

    convert(str(tiny_model_dir), str(tmp_path / "q4"), quantize=True, q_group_size=32, q_bits=4)
    cfg = _cfg(tmp_path / "q4", data, tmp_path / "run", loss="ga", compute_dtype="float32", grad_checkpoint=True)
    model, tok, forget, retain, ac = _setup(cfg)
    un = Unlearner(cfg, model, tok, forget, retain, ac)
    assert chunked._ATTR in vars(model)  # answered before any gradient
    peaks = []
    for _ in range(2):
        parts = un.next_forget()
        mx.eval(model.parameters())
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        un.forget_gradient(parts)
        peaks.append(mx.get_peak_memory() - base)
    assert peaks[0] <= 1.25 * peaks[1], peaks
