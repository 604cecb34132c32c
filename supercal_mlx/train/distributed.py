"""Data parallelism for ``supercal unlearn`` over ``mx.distributed`` (``mlx.launch -n N -- supercal unlearn ...``),
and micro-batches (``--micro-batches M``: each process computes its share of a batch in M pieces, one after
another, for memory).

Every process (rank) runs the same command line and holds the whole model. The
data streams are seeded alike, so every rank draws the same *global* batch
indices. A global batch is cut into ``S = N * M`` shards, example ``i`` going to
shard ``i mod S``; rank ``r`` computes shards ``r, r + N, ..., r + N (M - 1)``
(forget, random-completion, retain and retain-basis batches alike).

Exactness. One process computes each term as a mean over the global batch:
``T / n`` with ``T`` the sum over all labelled tokens (or sequences, for NPO)
and ``n`` their number. A shard computes its local mean ``T_s / n_s``; weighted
by ``w_s = S * n_s / n`` it becomes ``S * T_s / n``. Each rank adds up its
shards' gradients, ``mlx.nn.average_gradients`` divides the sum over ranks by N
and :meth:`World.average` the result by M: exactly the gradient of ``T / n``.
Every rank knows ``n`` without talking to the others: it has the global example
list. Against the batch computed whole, only the order of float32 sums differs,
so the results agree to rounding, not bit for bit. Two processes and one process
with two pieces compute the same shards and add the same two gradients
(``a + b == b + a``), so those two agree bit for bit (tests/test_distributed.py);
with more than two, the order of a ring's sums is the backend's.

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
    """This process's place among the data-parallel processes (size 1: a plain run), and the pieces
    (``--micro-batches``) each process computes its share of a batch in, one after another."""

    group: Any = None
    rank: int = 0
    size: int = 1
    pieces: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shards(self) -> int:
        """Pieces of every global batch, over all processes."""
        return self.size * self.pieces

    def shard(self, items: Sequence) -> list[list]:
        """This rank's pieces of a global batch: piece m holds items s, s + S, ... with s = rank + N * m and
        S = :attr:`shards` (one piece with every item when S is 1)."""
        step = self.shards
        if step == 1:
            return [list(items)]
        return [list(items[self.rank + self.size * m :: step]) for m in range(self.pieces)]

    def weight(self, local: int, total: int):
        """``S * local / total`` as a float32 scalar, or None when S is 1 (no multiplication at all)."""
        import mlx.core as mx

        return None if self.shards == 1 else mx.array(self.shards * local / max(total, 1), dtype=mx.float32)

    def average(self, grads: dict) -> dict:
        """Mean over all pieces of this rank's summed piece gradients: mlx.nn.average_gradients over ranks
        (sum / N), then / pieces; itself when S is 1."""
        if self.size > 1:
            from mlx.nn import average_gradients

            grads = average_gradients(grads, group=self.group)
        if self.pieces > 1:
            from mlx.utils import tree_map

            grads = tree_map(lambda g: g / self.pieces, grads)
        return grads

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
