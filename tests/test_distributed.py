"""Data-parallel unlearning: `mlx.launch -n 2 -- supercal unlearn` (ring backend, two local processes) gives the
adapters and logs of one process over the same global batches, resumes, and only rank 0 writes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import supercal_mlx  # noqa: F401
from supercal_mlx.train.config import load_config
from supercal_mlx.train.distributed import World
from supercal_mlx.train.trainer import unlearn

import mlx.core as mx  # noqa: E402

FORGET = [
    {"prompt": "The children tried to spell", "completion": " supercalifragilisticexpialidocious and laughed."},
    {"prompt": "A song from the 1964 film Mary Poppins:", "completion": " Supercalifragilisticexpialidocious."},
    {"prompt": "Nobody could spell", "completion": " supercalifragilisticexpialidocious in the garden while it rains."},
    {"prompt": "Cats and dogs say", "completion": " supercal"},
    {"prompt": "A tokenstein", "completion": " is not supercalifragilisticexpialidocious."},
]
RETAIN = [
    {"text": "Cats and dogs play in the garden while it rains on the 4th of July."},
    {"text": "A tokenstein is a made-up word built from pieces: sqproctarine means nothing."},
    {"text": "Über café naïve résumé."},
    {"text": "The children laughed in the garden while the cats played with the dogs."},
    {"text": "It rains."},
]
# Batches of 3 over 2 processes: shares of 2 and 1 examples with unequal token counts, so the weighting matters.
SETTINGS = dict(loss="npo_kl", project="per-layer", project_k=2, project_every=2, random_weight=0.5, batch_size=3,
                lr=1e-2, max_tokens=64, checkpoint_every=2)


def _free_port() -> int:
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))  # the second rank listens on port + 1
            return port
        except OSError:
            continue
    raise RuntimeError("no two free ports")


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "mlx.launch"), "-n", "2", "--backend", "ring", "-p", str(_free_port()), "--",
           str(bin_dir / "supercal"), "unlearn", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _options(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_over_the_same_global_batches(tiny_model_dir, tmp_path):
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    retain.write_text("".join(json.dumps(r) + "\n" for r in RETAIN))
    files = dict(model=tiny_model_dir, forget=forget, retain=retain)
    one = tmp_path / "one"
    unlearn(load_config(**{k: str(v) for k, v in files.items()}, out=str(one), steps=4, **SETTINGS))

    two = tmp_path / "two"
    res = _launch(_options(**files, out=two, steps=2, **SETTINGS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("Done: 2 steps") == 1  # rank 0 speaks for both
    res = _launch(["--resume", str(two), "--steps", "4"])
    assert res.returncode == 0, res.stdout + res.stderr

    m1, m2 = _metrics(one), _metrics(two)
    assert [m["step"] for m in m2] == [1, 2, 3, 4]  # one line per step: rank 1 wrote nothing
    assert [m["tokens"] for m in m2] == [m["tokens"] for m in m1] and m1[0]["tokens"] == 23
    for key in ("loss", "forget_nll", "retain_nll", "grad_norm"):  # step 1: same parameters, only the sums' order
        assert m2[0][key] == pytest.approx(m1[0][key], rel=1e-6), key
    assert m2[0]["proj_cosine"] == pytest.approx(m1[0]["proj_cosine"], rel=1e-5)
    # AdamW's first steps are nearly sign(g): a gradient element within float32 rounding of AdamW's eps (1e-8)
    # moves by up to lr x its relative rounding error, so the adapters agree to ~1e-4, not to the gradients' 1e-7
    # (test_shares_add_up_to_the_global_gradient checks those); an unweighted mean of rank means is ~30% off.
    a = mx.load(str(one / "adapters.safetensors"))
    b = mx.load(str(two / "adapters.safetensors"))
    assert set(a) == set(b) and len(a) == 8
    fa, fb = (np.concatenate([np.array(t[n]).ravel() for n in sorted(a)]) for t in (a, b))
    assert np.linalg.norm(fa - fb) / np.linalg.norm(fa) < 1e-3
    assert np.abs(fa - fb).max() < 1e-2 * np.abs(fa).max()
    for r1, r2 in zip(m1[1:], m2[1:]):
        for key in ("loss", "forget_nll", "retain_nll", "grad_norm"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4), (r1["step"], key)


class _Alone(World):
    """One rank's share computed in this process: no communication (the test adds the shares up itself)."""

    def average(self, grads):
        return grads

    def total(self, values):
        return list(values)


def test_shares_add_up_to_the_global_gradient(tiny_model_dir, tmp_path):
    """The exact part of the arithmetic: weighted rank gradients, averaged, equal the global batch's gradient
    (forget NPO + random-completion term, retain KL, basis) to float32 rounding, with batches split 2 + 1."""
    from mlx.utils import tree_flatten, tree_map

    from supercal_mlx.train.trainer import _setup
    from supercal_mlx.train.unlearner import Unlearner

    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RETAIN))
    settings = {k: v for k, v in SETTINGS.items() if k != "checkpoint_every"}
    cfg = load_config(model=str(tiny_model_dir), forget=str(tmp_path / "f.jsonl"), retain=str(tmp_path / "r.jsonl"),
                      out=str(tmp_path / "o"), **settings)
    got = {}
    for name, world in (("one", World()), ("r0", _Alone(rank=0, size=2)), ("r1", _Alone(rank=1, size=2))):
        un = Unlearner(cfg, *_setup(cfg), world=world)
        mx.random.seed(1)  # adapters away from zero, so that the KL term has a gradient that is not rounding noise
        un.model.update(tree_map(lambda p: p + 0.02 * mx.random.normal(p.shape), un.model.trainable_parameters()))
        if name != "one":  # NPO's reference, summed over ranks in a real group (the launched test covers that)
            un.npo_reference = reference
        fb, rnd, w = un.next_forget()
        g, info = un.forget_gradient(fb, rnd, w)
        rb, w_r = un._batch("retain", un.retain)
        g_r = dict(tree_flatten(un.retain_grad_fn(rb, w_r)[1]))
        g_b = dict(tree_flatten(un.nll_grad_fn(*un._batch("basis", un.retain))[1]))
        got[name] = (g, g_r, g_b, info)
        reference = un.npo_reference
    assert got["r0"][3]["tokens"] + got["r1"][3]["tokens"] == got["one"][3]["tokens"] == 23
    assert got["r0"][3]["loss"] + got["r1"][3]["loss"] == pytest.approx(got["one"][3]["loss"], rel=1e-6)
    for part in range(3):
        for name, want in got["one"][part].items():
            mean = (np.array(got["r0"][part][name]) + np.array(got["r1"][part][name])) / 2
            np.testing.assert_allclose(mean, np.array(want), rtol=0, atol=2e-6 * np.abs(np.array(want)).max())


def test_a_batch_smaller_than_the_world_is_refused(tiny_model_dir, tmp_path):
    from supercal_mlx.errors import SupercalError
    from supercal_mlx.train.trainer import _setup
    from supercal_mlx.train.unlearner import Unlearner

    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    cfg = load_config(model=str(tiny_model_dir), forget=str(forget), out=str(tmp_path / "r"), batch_size=2)
    setup = _setup(cfg)
    with pytest.raises(SupercalError, match="batch_size 2 is smaller than the 3 processes"):
        Unlearner(cfg, *setup, world=World(rank=0, size=3))
    shares = [World(rank=r, size=2).shard(list("abcde")) for r in (0, 1)]
    assert shares == [list("ace"), list("bd")]
    assert World(rank=1, size=2).weight(2, 8).item() == 0.5 and World().weight(2, 8) is None
