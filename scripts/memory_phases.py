"""MLX's peak memory in each phase of one unlearning step: which part of the step sets its peak.

    .venv/bin/python scripts/memory_phases.py --config RUN.yaml [--json-out phases.json]

Sets up the run as ``supercal unlearn --config RUN.yaml`` does (``trainer._setup``, the twin pool of the
tokenstein / value_swap losses, ``Unlearner``; nothing is written), then runs the phases of ``Unlearner.step``
one by one, ``mx.reset_peak_memory()`` before each, and reports each phase's peak above the memory alive
before it (GB = 1e9 bytes; the weights are ``weights``):

- ``forget``: the forget objective's value_and_grad (the forward and backward pass, head and loss included);
- ``retain``: the retain term's value_and_grad (losses with one);
- ``update``: gradient clipping and the AdamW update;
- ``body_forward`` / ``body_grad``: the model's body alone (no LM head, no loss) on the forget batch, forward
  only and value_and_grad of the sum of its output: what the blocks (with grad_checkpoint: the last block's
  recomputation and backward pass) cost whatever the loss.

``SUPERCAL_FULL_LOGITS=1`` in the environment: the full-logits path. ``scripts/bench_memory.py --phases`` runs
this beside each of its rows, in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)


def measure(fn) -> tuple[float, float]:
    """(peak GB above what was alive before ``fn``, seconds) of ``fn()`` evaluated; its result is dropped."""
    import mlx.core as mx

    mx.eval([])
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    mx.eval(fn())
    return (mx.get_peak_memory() - before) / 1e9, time.perf_counter() - t0


def phases(config: str) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten, tree_map_with_path

    from supercal_mlx.train.config import load_config
    from supercal_mlx.train.trainer import _setup, resolved
    from supercal_mlx.train.unlearner import ANCHORED, Unlearner

    cfg = load_config(config)
    model, tokenizer, forget, retain, adapter_config = _setup(cfg)
    cfg = resolved(cfg, adapter_config)
    twins = None
    if cfg.loss in ANCHORED:
        from supercal_mlx.train.twins import twin_pool

        twins, cfg = twin_pool(cfg, tokenizer, forget)
    un = Unlearner(cfg, model, tokenizer, forget, retain, adapter_config, twins=twins)
    mx.random.seed(0)
    out = {"weights": mx.get_active_memory() / 1e9}
    parts = un.next_forget()
    grads = {}
    out["forget"], out["forget_s"] = measure(lambda: grads.update(un.forget_gradient(parts)[0]) or [])
    if un.retain and un.retain_term:
        def retain_grad():
            (term, _, nll), g = un._pieces(un.retain_grad_fn, un._batch("retain", un.retain))
            for name, x in tree_flatten(g):
                grads[name] = grads[name] + x
            return [term, nll, list(grads.values())]

        out["retain"], out["retain_s"] = measure(retain_grad)

    def update():
        tree = tree_map_with_path(lambda name, _: grads[name], model.trainable_parameters())
        clipped, _ = optim.clip_grad_norm(tree, cfg.max_grad_norm or float("inf"))
        un.optimizer.update(model, clipped)
        return [model.trainable_parameters(), un.optimizer.state]

    out["update"], out["update_s"] = measure(update)
    grads.clear()
    fb = parts[0][0]  # the first piece's forget batch (the whole batch without micro-batches)
    inputs = fb.inputs if hasattr(fb, "inputs") else fb[0]
    out["body_forward"], out["body_forward_s"] = measure(lambda: model.model(inputs))
    out["body_grad"], out["body_grad_s"] = measure(
        lambda: nn.value_and_grad(model, lambda: model.model(inputs).astype(mx.float32).sum())())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="an unlearn config (YAML), as scripts/bench_memory.py writes")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    out = phases(a.config)
    print(json.dumps(out))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
