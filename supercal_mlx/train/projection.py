"""Orthogonal projection of the forget gradient away from a retain-gradient subspace.

The retain subspace is spanned by K gradients of the retain NLL (one per retain
batch). Per group of LoRA parameters we stack those K gradients as columns,
orthonormalise them in float32 by Gram-Schmidt with reorthogonalisation (each
column's projection removed twice, as orthogonal as Householder QR to rounding;
a column whose remainder is tiny is dropped, so a rank-deficient set never adds
arbitrary directions), and project the forget gradient ``g``:

    g_proj = g - Q (Q^T g)      (done twice: "twice is enough" in float32)

Groups: ``global`` is one vector over every LoRA parameter (what the original
PyTorch runs did); ``per-layer`` makes one group per transformer block (its
parameter names contain ``layers.N`` / ``h.N``), each projected independently,
which answers "are forget and retain gradients more collinear in some layers?".

Logged per group:

* ``proj_cosine`` = ||Q^T g|| / ||g||: the cosine between ``g`` and its
  projection onto the retain subspace (0: orthogonal, 1: inside it);
* ``proj_removed_pct`` = 100 * (1 - ||g_proj|| / ||g||): how much of the norm
  the projection took away (0 when the group was left alone).

Conflict-only mode (in the spirit of PCGrad, Yu et al. 2020, "Gradient Surgery
for Multi-Task Learning"): a group is projected only when its forget gradient
*opposes* retain learning, defined as a negative dot product with the mean of
the K retain gradients of that group. A step along ``-g`` then raises the
retain loss to first order, which is the harm projection is meant to prevent;
otherwise ``g`` is left exactly as it is.

Why not ``mx.linalg.qr``: a Householder Q is not made of the columns alone. Where
every retain gradient is exactly zero (LoRA's A matrices at the first step, while
B is still zero) its rows come out as rounding noise, not zeros, so the projection
gave such parameters gradients of ~1e-9, and AdamW, which divides by the gradient's
own size, turned them into updates of up to the learning rate with signs set by
rounding. Gram-Schmidt's Q is a combination of the columns: zero rows stay zero,
and a parameter with no forget or retain gradient gets no update.

mlx has no gradient projection utility; this module is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lora import block_index

# A column whose remainder, once the earlier columns are removed, is below this fraction of the largest column
# norm is treated as dependent.
RANK_TOL = 1e-5


@dataclass
class RetainBasis:
    """Per group: parameter names (in flattening order), Q (d, k) orthonormal, mean retain gradient (d,)."""

    names: dict[str, list[str]]
    q: dict[str, object]
    mean: dict[str, object]

    def arrays(self) -> dict:
        """Flat name -> array, for saving in a checkpoint."""
        out = {f"q.{g}": q for g, q in self.q.items()}
        out.update({f"mean.{g}": m for g, m in self.mean.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, names: dict[str, list[str]]) -> "RetainBasis":
        return cls(names=names, q={g: arrays[f"q.{g}"] for g in names}, mean={g: arrays[f"mean.{g}"] for g in names})


def group_names(names: list[str], mode: str) -> dict[str, list[str]]:
    """Parameter names by group: {'all': [...]} or {'0': [...], '1': [...]} (by block index)."""
    if mode == "global":
        return {"all": sorted(names)}
    if mode != "per-layer":
        raise ValueError(f"unknown projection mode {mode!r}")
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(block_index(name) or "other", []).append(name)
    return dict(sorted(groups.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0)))


def _flat(grads: dict, names: list[str]):
    import mlx.core as mx

    return mx.concatenate([grads[n].astype(mx.float32).reshape(-1) for n in names])  # (d,)


def _unflat(vec, grads: dict, names: list[str]) -> dict:
    out, offset = {}, 0
    for n in names:
        size = grads[n].size
        out[n] = vec[offset : offset + size].reshape(grads[n].shape).astype(grads[n].dtype)
        offset += size
    return out


def orthonormal_columns(cols):
    """(d, k) orthonormal basis of the span of the (d, K) columns, k <= K, by Gram-Schmidt done twice per column
    (a column is dropped when what is left of it is below ``RANK_TOL`` x the largest column norm)."""
    import mlx.core as mx

    floor = RANK_TOL * max(mx.linalg.norm(cols, axis=0).max().item(), 1e-30)
    basis = []
    for j in range(cols.shape[1]):
        v = cols[:, j]
        if basis:
            q = mx.stack(basis, axis=1)  # (d, j)
            v = v - q @ (q.T @ v)
            v = v - q @ (q.T @ v)  # twice is enough
        norm = mx.linalg.norm(v).item()
        if norm > floor:
            basis.append(v / norm)
    return mx.stack(basis, axis=1) if basis else mx.zeros((cols.shape[0], 0), dtype=cols.dtype)


def build_basis(retain_grads: list[dict], mode: str) -> RetainBasis:
    """Orthonormal basis of the span of K retain gradients (flat dicts name -> array), per group."""
    import mlx.core as mx

    groups = group_names(list(retain_grads[0]), mode)
    q, mean = {}, {}
    for g, names in groups.items():
        cols = mx.stack([_flat(rg, names) for rg in retain_grads], axis=1)  # (d, K)
        mean[g] = cols.mean(axis=1)  # (d,)
        q[g] = orthonormal_columns(cols)
    mx.eval(q, mean)
    return RetainBasis(names=groups, q=q, mean=mean)


def project(grads: dict, basis: RetainBasis, *, conflict_only: bool = False) -> tuple[dict, dict]:
    """(projected grads, stats): grads is flat name -> array; stats has 'proj_cosine' and
    'proj_removed_pct', each a dict group -> float. Parameters outside the basis pass unchanged."""
    import mlx.core as mx

    out = dict(grads)
    cosine, removed = {}, {}
    for g, names in basis.names.items():
        vec = _flat(grads, names)  # (d,)
        q = basis.q[g]  # (d, k)
        norm = mx.linalg.norm(vec)
        coef = q.T @ vec  # (k,)
        conflict = (vec @ basis.mean[g]) < 0
        cos = mx.where(norm > 0, mx.linalg.norm(coef) / mx.maximum(norm, 1e-30), 0.0)
        cosine[g] = cos
        if conflict_only and not conflict.item():
            removed[g] = mx.array(0.0)
            continue
        proj = vec - q @ coef
        proj = proj - q @ (q.T @ proj)  # second pass removes what float32 rounding left in the subspace
        removed[g] = mx.where(norm > 0, 100.0 * (1.0 - mx.linalg.norm(proj) / mx.maximum(norm, 1e-30)), 0.0)
        out.update(_unflat(proj, grads, names))
    mx.eval(out, cosine, removed)
    stats = {"proj_cosine": {g: float(v) for g, v in cosine.items()},
             "proj_removed_pct": {g: float(v) for g, v in removed.items()}}
    return out, stats
