"""Projection of the forget gradient: orthogonality per layer and globally, statistics, conflict-only."""

from __future__ import annotations

import numpy as np
import pytest

import supercal_mlx  # noqa: F401
from supercal_mlx.train.projection import build_basis, group_names, project

import mlx.core as mx  # noqa: E402

SHAPES = {
    "model.h.0.attn.q_proj.lora_a": (8, 2), "model.h.0.attn.q_proj.lora_b": (2, 8),
    "model.h.1.attn.q_proj.lora_a": (8, 2), "model.h.1.attn.v_proj.lora_b": (2, 8),
    "model.layers.12.mlp.fc_in.lora_a": (8, 2),
}


def _grads(rng, scale=1.0):
    return {n: mx.array((scale * rng.standard_normal(s)).astype(np.float32)) for n, s in SHAPES.items()}


def _vec(grads, names):
    return np.concatenate([np.array(grads[n], dtype=np.float64).ravel() for n in names])


def test_groups_by_block_index():
    groups = group_names(list(SHAPES), "per-layer")
    assert list(groups) == ["0", "1", "12"]
    assert groups["1"] == ["model.h.1.attn.q_proj.lora_a", "model.h.1.attn.v_proj.lora_b"]
    assert group_names(list(SHAPES), "global") == {"all": sorted(SHAPES)}


@pytest.mark.parametrize("mode", ["per-layer", "global"])
def test_projected_gradient_is_orthogonal_to_every_retain_gradient(mode):
    rng = np.random.default_rng(0)
    retain = [_grads(rng) for _ in range(3)]
    g = _grads(rng)
    basis = build_basis(retain, mode)
    out, stats = project(g, basis)
    big, _ = project({n: 1000 * v for n, v in g.items()}, basis)
    for group, names in basis.names.items():
        pg, fg = _vec(out, names), _vec(g, names)
        for r in retain:
            rv = _vec(r, names)
            assert abs(pg @ rv) < 1e-5
            # float32 output: what is left is relative rounding, whatever the gradient's scale
            assert abs(_vec(big, names) @ rv) / (np.linalg.norm(_vec(big, names)) * np.linalg.norm(rv)) < 1e-6
        # statistics against float64: cosine = ||Q^T g|| / ||g||, removed = 100 (1 - ||g_proj|| / ||g||)
        q, _ = np.linalg.qr(np.stack([_vec(r, names) for r in retain], axis=1))
        cos = np.linalg.norm(q.T @ fg) / np.linalg.norm(fg)
        assert stats["proj_cosine"][group] == pytest.approx(cos, rel=1e-4)
        assert stats["proj_removed_pct"][group] == pytest.approx(100 * (1 - np.sqrt(1 - cos**2)), rel=1e-3, abs=1e-4)
        np.testing.assert_allclose(pg, fg - q @ (q.T @ fg), atol=1e-5)
    assert set(stats["proj_cosine"]) == ({"0", "1", "12"} if mode == "per-layer" else {"all"})


def test_per_layer_projection_differs_from_global():
    rng = np.random.default_rng(1)
    retain = [_grads(rng) for _ in range(2)]
    g = _grads(rng)
    per_layer, _ = project(g, build_basis(retain, "per-layer"))
    whole, _ = project(g, build_basis(retain, "global"))
    names = sorted(SHAPES)
    assert not np.allclose(_vec(per_layer, names), _vec(whole, names), atol=1e-3)
    # the global result is orthogonal to the full retain vectors but not block by block
    assert abs(_vec(whole, names) @ _vec(retain[0], names)) < 1e-5
    block0 = group_names(names, "per-layer")["0"]
    assert abs(_vec(whole, block0) @ _vec(retain[0], block0)) > 1e-3


def test_already_orthogonal_gradient_is_unchanged():
    rng = np.random.default_rng(2)
    retain = [_grads(rng) for _ in range(3)]
    basis = build_basis(retain, "per-layer")
    g = _grads(rng)
    orth, _ = project(g, basis)
    again, stats = project(orth, basis)
    for n in SHAPES:
        np.testing.assert_allclose(np.array(again[n]), np.array(orth[n]), atol=1e-6)
    assert all(abs(v) < 1e-4 for v in stats["proj_removed_pct"].values())
    assert all(v < 1e-5 for v in stats["proj_cosine"].values())


def test_conflict_only_leaves_non_conflicting_groups_alone():
    rng = np.random.default_rng(3)
    retain = [_grads(rng) for _ in range(2)]
    basis = build_basis(retain, "per-layer")
    mean = {n: (retain[0][n] + retain[1][n]) / 2 for n in SHAPES}
    # block 0 agrees with the mean retain gradient, block 1 opposes it, block 12 agrees
    g = {n: (-1.0 if ".h.1." in n else 1.0) * mean[n] + 0.1 * mx.array(rng.standard_normal(SHAPES[n]).astype(np.float32))
         for n in SHAPES}
    out, stats = project(g, basis, conflict_only=True)
    for n in SHAPES:
        if ".h.1." in n:
            assert not np.array_equal(np.array(out[n]), np.array(g[n]))
        else:
            np.testing.assert_array_equal(np.array(out[n]), np.array(g[n]))
    assert stats["proj_removed_pct"]["0"] == 0.0 and stats["proj_removed_pct"]["12"] == 0.0
    assert stats["proj_removed_pct"]["1"] > 50.0 and stats["proj_cosine"]["0"] > 0.5
    names = group_names(list(SHAPES), "per-layer")["1"]
    for r in retain:
        assert abs(_vec(out, names) @ _vec(r, names)) < 1e-5


def test_dependent_retain_gradients_add_no_direction():
    rng = np.random.default_rng(4)
    r = _grads(rng)
    basis = build_basis([r, {n: 2 * v for n, v in r.items()}, r], "global")
    assert basis.q["all"].shape[1] == 1
    g = _grads(rng)
    out, _ = project(g, basis)
    names = sorted(SHAPES)
    u = _vec(r, names) / np.linalg.norm(_vec(r, names))
    np.testing.assert_allclose(_vec(out, names), _vec(g, names) - u * (u @ _vec(g, names)), atol=1e-5)


def test_a_parameter_without_gradient_gets_none_after_projection():
    """LoRA's A matrices at the first step (B = 0): zero in the forget and every retain gradient. Their
    projected gradient must be exactly zero, or AdamW (which divides by the gradient's size) turns rounding
    noise into updates of up to the learning rate. A Householder QR (``mx.linalg.qr``) left ~1e-9 there."""
    rng = np.random.default_rng(3)

    def grads():
        g = _grads(rng)
        g["model.h.0.attn.q_proj.lora_a"] = mx.zeros(SHAPES["model.h.0.attn.q_proj.lora_a"])  # first in its group
        return g

    retain, g = [grads() for _ in range(3)], grads()
    for mode in ("per-layer", "global"):
        out, stats = project(g, build_basis(retain, mode))
        assert not np.array(out["model.h.0.attn.q_proj.lora_a"]).any()
        assert stats["proj_removed_pct"]["0" if mode == "per-layer" else "all"] > 1  # the rest was projected
