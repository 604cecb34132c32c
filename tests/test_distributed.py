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


def _adapters(run: Path) -> np.ndarray:
    a = mx.load(str(run / "adapters.safetensors"))
    assert len(a) == 8
    return np.concatenate([np.array(a[n]).ravel() for n in sorted(a)])


MEASURED = ("loss", "forget_nll", "retain_nll", "grad_norm", "proj_cosine", "proj_removed_pct", "tokens")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Two processes (2 steps, then --resume to 4); one process with the batches in the same 2 pieces
    (--micro-batches 2); one process with the batches whole. Batches of 3: pieces of 2 and 1 examples with
    unequal token counts, so the weighting matters."""
    tmp = tmp_path_factory.mktemp("dist")
    forget, retain = tmp / "forget.jsonl", tmp / "retain.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    retain.write_text("".join(json.dumps(r) + "\n" for r in RETAIN))
    files = dict(model=tiny_model_dir, forget=forget, retain=retain)
    out = {}
    for name, pieces, lr in (("whole", 1, None), ("pieces", 2, None), ("whole-5e-4", 1, 5e-4), ("pieces-5e-4", 2, 5e-4)):
        out[name] = tmp / name
        unlearn(load_config(**{k: str(v) for k, v in files.items()}, out=str(out[name]), steps=4,
                            micro_batches=pieces, **(SETTINGS | ({"lr": lr} if lr else {}))))
    out["two"] = tmp / "two"
    res = _launch(_options(**files, out=out["two"], steps=2, **SETTINGS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("Done: 2 steps") == 1  # rank 0 speaks for both
    res = _launch(["--resume", str(out["two"]), "--steps", "4"])
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_two_processes_equal_one_process_over_the_same_pieces_bit_for_bit(runs):
    """Rank r computes piece r of every batch; one process with --micro-batches 2 computes the same pieces one
    after another. The sums of two gradients (a + b == b + a) and the halving are exact, so after 4 steps
    (projection, NPO's cached reference, the random-completion term, a resume) every bit agrees."""
    m1, m2 = _metrics(runs["pieces"]), _metrics(runs["two"])
    assert [m["step"] for m in m2] == [1, 2, 3, 4]  # one line per step: rank 1 wrote nothing
    assert m1[0]["tokens"] == 23
    for r1, r2 in zip(m1, m2):
        assert {k: r1.get(k) for k in MEASURED} == {k: r2.get(k) for k in MEASURED}
    assert np.array_equal(_adapters(runs["pieces"]), _adapters(runs["two"]))


def test_pieces_give_the_whole_batch_update_to_rounding(runs):
    """Splitting a batch changes only the order of float32 sums: step 1 (same parameters) agrees to 1e-6, the
    gradients to ~1e-7 (test_pieces_add_up_to_the_whole_gradient). After 4 steps the adapters agree to ~2.5e-5
    (relative L2; ~2e-6 without projection) at this test's large lr of 1e-2: where the forget gradient lies
    almost inside the retain subspace, the projection leaves a small difference of large terms, whose rounding
    AdamW, scale-free per element, passes on. At the original experiment's lr of 5e-4 they agree to ~5e-7. An
    unweighted mean of the pieces' means would be ~30% off."""
    m1, m2 = _metrics(runs["whole"]), _metrics(runs["pieces"])
    assert [m["tokens"] for m in m2] == [m["tokens"] for m in m1]
    for key in ("loss", "forget_nll", "retain_nll", "grad_norm", "proj_cosine"):
        assert m2[0][key] == pytest.approx(m1[0][key], rel=1e-6), key
    fa, fb = _adapters(runs["whole"]), _adapters(runs["pieces"])
    assert np.linalg.norm(fa - fb) / np.linalg.norm(fa) < 1e-4
    assert np.abs(fa - fb).max() < 3e-3 * np.abs(fa).max()
    for r1, r2 in zip(m1[1:], m2[1:]):
        for key in ("loss", "forget_nll", "retain_nll", "grad_norm"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), (r1["step"], key)
    fa, fb = _adapters(runs["whole-5e-4"]), _adapters(runs["pieces-5e-4"])
    assert np.linalg.norm(fa - fb) / np.linalg.norm(fa) < 1e-5


def test_pieces_add_up_to_the_whole_gradient(tiny_model_dir, tmp_path):
    """Weighted piece gradients, averaged, equal the whole batch's gradient (forget NPO + random-completion
    term, retain KL, basis) to float32 rounding, with batches of 3 in pieces of 2 + 1."""
    from mlx.utils import tree_flatten, tree_map

    from supercal_mlx.train.trainer import _setup
    from supercal_mlx.train.unlearner import Unlearner

    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RETAIN))
    settings = {k: v for k, v in SETTINGS.items() if k != "checkpoint_every"}
    got = {}
    for pieces in (1, 2):
        cfg = load_config(model=str(tiny_model_dir), forget=str(tmp_path / "f.jsonl"), retain=str(tmp_path / "r.jsonl"),
                          out=str(tmp_path / "o"), micro_batches=pieces, **settings)
        un = Unlearner(cfg, *_setup(cfg))
        mx.random.seed(1)  # adapters away from zero, so that the KL term has a gradient that is not rounding noise
        un.model.update(tree_map(lambda p: p + 0.02 * mx.random.normal(p.shape), un.model.trainable_parameters()))
        parts = un.next_forget()
        assert len(parts) == pieces
        g, info = un.forget_gradient(parts)
        g_r = un.world.average(un._pieces(un.retain_grad_fn, un._batch("retain", un.retain))[1])
        g_b = un.world.average(un._pieces(un.nll_grad_fn, un._batch("basis", un.retain))[1])
        got[pieces] = (g, dict(tree_flatten(g_r)), dict(tree_flatten(g_b)), info)
    assert got[1][3]["tokens"] == got[2][3]["tokens"] == 23
    assert got[2][3]["loss"] == pytest.approx(got[1][3]["loss"], rel=1e-6)
    for part in range(3):
        for name, want in got[1][part].items():
            want = np.array(want)
            np.testing.assert_allclose(np.array(got[2][part][name]), want, rtol=0, atol=2e-6 * np.abs(want).max())


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
    cfg = load_config(model=str(tiny_model_dir), forget=str(forget), out=str(tmp_path / "r"), batch_size=2,
                      micro_batches=3)
    with pytest.raises(SupercalError, match="batch_size 2 is smaller than 1 process x 3 micro-batches"):
        Unlearner(cfg, *setup)
    shares = [World(rank=r, size=2).shard(list("abcde")) for r in (0, 1)]
    assert shares == [[list("ace")], [list("bd")]]
    # 2 processes x 2 pieces: 4 shards; rank 1 holds shards 1 and 3
    assert World(rank=1, size=2, pieces=2).shard(list("abcdefg")) == [list("bf"), list("d")]
    assert World().shard(list("abc")) == [list("abc")]
    assert World(rank=1, size=2).weight(2, 8).item() == 0.5 and World().weight(2, 8) is None
    assert World(pieces=3).weight(2, 8).item() == 0.75


@pytest.mark.parametrize("loss", ["tokenstein", "value_swap"])
def test_anchored_pieces_add_up_to_the_whole_gradient(tiny_model_dir, tmp_path, loss):
    """The tokenstein loss's two means (twin-aligned positions, the word's own) are weighted separately, and
    value_swap's errors are divided by the whole batch's targets' norm, so the pieces' gradients add up to the
    whole batch's (batches of 3 in 2 and in 3 pieces)."""
    from mlx.utils import tree_map

    from supercal_mlx.train.trainer import _setup
    from supercal_mlx.train.twins import twin_pool
    from supercal_mlx.train.unlearner import Unlearner

    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FORGET[:3] + FORGET[4:]))
    # value_swap needs a made-up word of the word's token count in context: " tried" is one token, as is the word
    words = {"tokenstein": dict(twins=2, tokenstein_words=["sqproctarine", "blorvexaminal", "quintaplodic"]),
             "value_swap": dict(twins=1, tokenstein_words=["tried"])}
    got = {}
    for pieces in (1, 2, 3):
        cfg = load_config(model=str(tiny_model_dir), forget=str(tmp_path / "f.jsonl"), out=str(tmp_path / "o"),
                          loss=loss, word="supercalifragilisticexpialidocious", batch_size=3, micro_batches=pieces,
                          **words[loss])
        model, tok, forget, retain, adapter_config = _setup(cfg)
        pool, cfg = twin_pool(cfg, tok, forget)
        un = Unlearner(cfg, model, tok, forget, retain, adapter_config, twins=pool)
        un.model.eval()  # no dropout: the base model's values are computed before the pieces' gradients
        mx.random.seed(1)  # adapters away from zero: every LoRA matrix gets a gradient
        un.model.update(tree_map(lambda p: p + 0.2 * mx.random.normal(p.shape), un.model.trainable_parameters()))
        parts = un.next_forget()
        assert len(parts) == pieces
        got[pieces] = un.forget_gradient(parts)
    whole, info = got[1]
    assert info["tokens"] >= (10 if loss == "tokenstein" else 2) and info["loss"] > 0
    for pieces in (2, 3):
        g, i = got[pieces]
        assert i["tokens"] == info["tokens"]
        # a KL of ~0.04 nats is a difference of terms of several nats: its rounding is absolute, not relative
        assert i["loss"] == pytest.approx(info["loss"], rel=1e-6, abs=1e-6)
        assert i["forget_nll"] == pytest.approx(info["forget_nll"], rel=1e-6)
        for name, want in whole.items():
            want = np.array(want)
            np.testing.assert_allclose(np.array(g[name]), want, rtol=0, atol=2e-6 * np.abs(want).max())
