"""Data parallelism for ``supercal unlearn`` over ``mx.distributed`` (``mlx.launch -n N -- supercal unlearn ...``).

Every process (rank) runs the same command line and holds the whole model. The
data streams are seeded alike, so every rank draws the same *global* batch
indices; rank ``r`` of ``N`` keeps examples ``r, r + N, r + 2N, ...`` of each
global batch (forget, random-completion, retain and retain-basis batches alike).

Exactness. One process computes each term as a mean over the global batch:
``S / n`` with ``S`` the sum over all labelled tokens (or sequences, for NPO)
and ``n`` their number. A rank computes its local mean ``S_r / n_r``; weighted
by ``w_r = N * n_r / n`` it becomes ``N * S_r / n``, and
``mlx.nn.average_gradients`` (sum over ranks / N) of the weighted gradients is
exactly the gradient of ``S / n``. Every rank knows ``n`` without talking to
the others: it has the global example list. Only the summation order differs
from one process, so adapters agree to float32 rounding, not bit for bit.

After the average, every rank holds the same gradient bits; projection,
clipping and AdamW are deterministic, so the ranks stay bit-identical and only
LoRA gradients (and a few scalars for the logs) go over the wire. Rank 0 alone
writes the run folder; every rank runs the same control flow (probes and guards
included), so they stop together.

mlx-lm's LoRA trainer (``mlx_lm.tuner.trainer``) averages per-rank mean losses,
which is exact only when every rank has the same number of tokens; the weights
above make it exact for any batch split. Its ``average_gradients`` is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import SupercalError


@dataclass
class World:
    """This process's place among the data-parallel processes (size 1: a plain run)."""

    group: Any = None
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        """This rank's share of a global batch: items r, r + N, ... (all of them when alone)."""
        return list(items) if self.size == 1 else list(items[self.rank :: self.size])

    def weight(self, local: int, total: int):
        """``N * local / total`` as a float32 scalar, or None when alone (no multiplication at all)."""
        import mlx.core as mx

        return None if self.size == 1 else mx.array(self.size * local / max(total, 1), dtype=mx.float32)

    def average(self, grads: dict) -> dict:
        """Mean over ranks of a flat or nested gradient tree (mlx.nn.average_gradients); itself when alone."""
        if self.size == 1:
            return grads
        from mlx.nn import average_gradients

        return average_gradients(grads, group=self.group)

    def total(self, values: Sequence[float]) -> list[float]:
        """Sums over ranks of a few scalars (for the logs); the values themselves when alone."""
        if self.size == 1:
            return list(values)
        import mlx.core as mx

        out = mx.distributed.all_sum(mx.array(values, dtype=mx.float32), group=self.group)
        return out.tolist()

    def check_same(self, what: str, values: Sequence[float]) -> None:
        """Refuse to go on when ranks disagree about ``values`` (e.g. a resumed checkpoint's step and sums)."""
        if self.size == 1:
            return
        import mlx.core as mx

        mine = mx.array(values, dtype=mx.float32)  # (k,)
        every = mx.distributed.all_gather(mine[None], group=self.group)  # (N, k): every rank's values
        if not mx.array_equal(every, mx.broadcast_to(every[:1], every.shape)).item():
            raise SupercalError(f"the {self.size} processes disagree about {what}; every host needs the same files "
                                "at the same paths (for --resume, the run folder too)")


def init_world() -> World:
    """The data-parallel group mlx.launch set up (ring, JACCL, MPI or NCCL), or a one-process World."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        return World()
    group = mx.distributed.init()
    if group.size() == 1:
        return World()
    return World(group=group, rank=group.rank(), size=group.size())


def labelled(example) -> int:
    """Labelled target positions of an example ``(ids, n_prompt)``, as :func:`batches.make_batch` masks them."""
    ids, n_prompt = example
    return len(ids) - max(n_prompt, 1)
