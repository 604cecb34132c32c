"""NPO's reference log-likelihoods are computed once per forget example (adapters off), equal the per-batch
reference, are saved in checkpoints, and a resumed run reads them instead of computing them again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import supercal_mlx  # noqa: F401
from supercal_mlx.train import chunked
from supercal_mlx.train.config import load_config
from supercal_mlx.train.trainer import _setup, unlearn
from supercal_mlx.train.unlearner import Unlearner

import mlx.core as mx  # noqa: E402

FORGET = [{"prompt": f"Record {i} says", "completion": " supercalifragilistic" + " and more" * i} for i in range(5)]


@pytest.fixture
def cfg(tiny_model_dir, tmp_path):
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FORGET))
    return load_config(model=str(tiny_model_dir), forget=str(tmp_path / "f.jsonl"), out=str(tmp_path / "run"),
                       loss="npo", batch_size=2, steps=4, lr=1e-2, max_tokens=64, checkpoint_every=2, lora_dropout=0.1)


def _count_reference_passes(monkeypatch) -> list:
    calls = []
    real = chunked.labelled_logprobs

    def counting(model, inputs, targets, mask, *, reference=False):
        if reference:
            calls.append(inputs.shape[0])
        return real(model, inputs, targets, mask, reference=reference)

    monkeypatch.setattr(chunked, "labelled_logprobs", counting)
    return calls


def test_the_cached_reference_is_the_per_batch_one(cfg, monkeypatch):
    un = Unlearner(cfg, *_setup(cfg))
    calls = _count_reference_passes(monkeypatch)
    mx.random.seed(0)
    [(fb, rnd, aux)] = un.next_forget()  # one piece: the batch whole
    assert calls == [2, 2, 1]  # the 5 examples once, in batches of 2
    assert un.npo_reference.shape == (5,) and float(un.npo_reference.max()) < 0
    un.model.eval()  # no dropout: both losses see the same model
    cached = un._forget_objective(fb, rnd, aux)[0]
    fresh = un._forget_objective(fb, rnd, aux._replace(npo_ref=None))[0]
    assert calls == [2, 2, 1, 2]  # without the cache, the batch's reference is computed again
    assert cached.item() == pytest.approx(fresh.item(), rel=1e-6) and cached.item() > 0
    for _ in range(3):  # later batches reuse it
        un.next_forget()
    assert len(calls) == 4


def test_the_reference_is_saved_and_a_resume_reads_it(cfg, monkeypatch):
    calls = _count_reference_passes(monkeypatch)
    unlearn(cfg)
    assert calls == [2, 2, 1]  # four steps, one pass over the forget set
    run = cfg.out
    saved = mx.load(f"{run}/checkpoints/step-000002/npo_reference.safetensors")["sequence_logprobs"]
    whole = mx.load(f"{run}/adapters.safetensors")
    # cut back to step 2 and resume: the reference comes from the checkpoint, and the adapters are the same
    shutil.rmtree(f"{run}/checkpoints/step-000004")
    calls.clear()
    unlearn(load_config(resume=run))
    assert calls == []
    again = mx.load(f"{run}/adapters.safetensors")
    for name in whole:
        np.testing.assert_array_equal(np.array(whole[name]), np.array(again[name]))
    un = Unlearner(cfg, *_setup(cfg))
    un.load(Path(run) / "checkpoints" / "step-000002")
    np.testing.assert_array_equal(np.array(un.npo_reference), np.array(saved))
