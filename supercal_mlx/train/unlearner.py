"""One unlearning step and the state it carries (model, data streams, optimizer, retain basis).

The run around it (setup, logs, probes, guards, checkpoints, resume) is
:func:`supercal_mlx.train.trainer.unlearn`. One step ``k`` (1-based) does, in this order:

1. reseed mlx's random generator from (seed, k): LoRA dropout is then a function
   of the step alone, so a resumed run draws exactly what an uninterrupted one
   would (mlx 0.32 cannot restore ``mx.random.state``, so this replaces saving it);
2. the forget gradient ``g_f`` of the forget objective (GA or NPO, plus Yao et
   al.'s random-completion term when ``random_weight > 0``) on the next forget batch;
3. with projection: every ``project_every`` steps a new retain basis from
   ``project_k`` retain batches (eval mode, no dropout), then ``g_f`` projected;
4. the gradient ``g_r`` of the retain term (``retain_weight`` x KL or NLL) on the
   next retain batch, added *after* projection: the retain basis gradients are
   used for nothing but the basis, so none of them can leak into the update;
5. the global norm of ``g = P(g_f) + g_r`` (logged before clipping), clipping,
   guards (non-finite loss or norm; retain-NLL collapse), AdamW update.

Metrics of record ``k`` are measured on the parameters before update ``k`` (as the
Hugging Face Trainer logs them); probes at step ``k`` are generated after ``k``
updates (step 0 = the base model). ``tokens`` counts the labelled forget tokens
of the step. ``peak_memory_gb`` is mlx's peak allocation during the step (GB = 1e9
bytes, as mlx-lm prints it), None where mlx reports no peak.

mlx-lm's ``tuner.trainer.train`` runs one loss with one batch iterator; this loop
needs two data streams, separate gradients, projection and guards, so it is
written here on mlx-lm's pieces (LoRA layers, ``clip_grad_norm``, schedules).

Data parallel and micro-batches (:mod:`supercal_mlx.train.distributed`): with a ``World`` of N
processes and M micro-batches every batch above is computed as the rank's M
pieces of the global batch, one after another; each term is weighted so that the
averaged gradient equals the global batch's, and the forget, retain and basis
gradients are averaged before projection; the logged loss, NLLs and token counts
are the global ones.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

from . import checkpoint as ckpt
from .config import UnlearnConfig
from ..errors import SupercalError

STREAMS = {"forget": 0, "retain": 1, "basis": 2, "random": 3}
ANCHORED = ("tokenstein", "value_swap")  # losses whose forget batches carry twins (train/anchored.py)


def make_schedule(cfg: UnlearnConfig):
    """Learning rate by update index (0-based): linear warmup lr*(s+1)/W for s < W, then the schedule."""
    import mlx.core as mx
    import mlx.optimizers as optim

    decay = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "linear":
        main = optim.linear_schedule(cfg.lr, cfg.lr_end, decay)
    elif cfg.schedule == "cosine":
        main = optim.cosine_decay(cfg.lr, decay, cfg.lr_end)
    else:
        main = lambda step: mx.array(cfg.lr, dtype=mx.float32)  # noqa: E731
    w = cfg.warmup_steps
    if w == 0:
        return main
    warm = optim.linear_schedule(cfg.lr / w, cfg.lr, w - 1) if w > 1 else (lambda step: mx.array(cfg.lr, mx.float32))
    return optim.join_schedules([warm, main], [w])


class ForgetAux(NamedTuple):
    """What a forget batch needs besides its tokens: weights of a piece of the batch (None for a batch computed
    whole) for the main term (NPO: per sequence; tokenstein: a pair), the NLL and the random-completion term;
    NPO's cached reference (B,) or None; value_swap's (targets, norms) or None."""

    w_main: Any = None
    w_tok: Any = None
    w_rnd: Any = None
    npo_ref: Any = None
    values: Any = None


def _step_seed(seed: int, step: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class Unlearner:
    """Holds the model, data streams, optimizer and retain basis; :meth:`step` does one update."""

    def __init__(self, cfg: UnlearnConfig, model, tokenizer, forget: list, retain: list | None, adapter_config: dict,
                 *, twins=None, world=None):
        import mlx.nn as nn
        import mlx.optimizers as optim

        from .batches import BatchStream
        from .chunked import split_head
        from .distributed import World

        self.cfg, self.model, self.tokenizer, self.adapter_config = cfg, model, tokenizer, adapter_config
        self.forget, self.retain = forget, retain
        self.world = dataclasses.replace(world or World(), pieces=cfg.micro_batches)
        b, n, m = cfg.batch_size, self.world.size, cfg.micro_batches
        if b < n * m:
            pieces = f"the {n} processes" if m == 1 else f"{n} process{'es' if n > 1 else ''} x {m} micro-batches"
            raise SupercalError(f"batch_size {b} is smaller than {pieces}; every piece needs an example of each "
                                f"batch: pass --batch-size {n * m} or more")
        self.streams = {"forget": BatchStream(len(forget), b, seed=cfg.seed, stream=STREAMS["forget"])}
        if retain:
            for name in ("retain", "basis"):
                self.streams[name] = BatchStream(len(retain), b, seed=cfg.seed, stream=STREAMS[name])
        if cfg.random_weight > 0:
            pool = len(retain) if cfg.random_source == "retain" else len(forget)
            if cfg.random_source == "shuffle" and pool < 2:
                raise SupercalError("random_source shuffle needs at least 2 forget records; use random_source retain")
            self.streams["random"] = BatchStream(pool, b, seed=cfg.seed, stream=STREAMS["random"])
        self.retain_term = "kl" if cfg.loss.endswith("_kl") else "nll" if cfg.loss.endswith("graddiff") else None
        self.twins, self.tap = twins, None  # tokenstein / value_swap: a twins.TwinPool, and the v_proj tap
        if cfg.loss in ANCHORED:
            self.retain_term = cfg.retain_term if cfg.retain_weight > 0 else None
            if cfg.loss == "value_swap":
                from .values import ValueTap

                self.tap = ValueTap(model, cfg.swap_layers)
        self.schedule = make_schedule(cfg)
        self.optimizer = optim.AdamW(learning_rate=self.schedule, weight_decay=cfg.weight_decay)
        self.optimizer.init(model.trainable_parameters())
        # split_head's check (a forward pass on 2 tokens, then .item()) must run here, outside value_and_grad:
        # evaluated inside the gradient trace it kept every cast/dequantized weight chunk of the check alive,
        # 9.8 GB above the weights per step at GPT-J width, 1 layer, 4-bit, float32 compute
        split_head(model)
        self.forget_grad_fn = nn.value_and_grad(model, self._forget_objective)
        self.retain_grad_fn = nn.value_and_grad(model, self._retain_objective)
        self.nll_grad_fn = nn.value_and_grad(model, self._nll)
        self.basis = None
        self.npo_reference = None  # (n_forget,) float32, made at the first NPO step (_npo_reference)
        self.step_done = 0
        self.retain_baseline: float | None = None  # first retain NLL of the run, for the collapse guard

    # --- objectives (value_and_grad differentiates the first output) -------------------------------
    def _forget_objective(self, fb, rnd, aux=None):
        """(loss, ntoks, forget NLL); ``aux``: the :class:`ForgetAux` of the batch (rank weights, NPO reference)."""
        from . import anchored
        from . import losses as L

        w_main, w_tok, w_rnd, ref, values = aux or ForgetAux()
        if isinstance(fb, anchored.AnchoredBatch):
            if self.tap is not None:
                loss, npos, nll = anchored.value_swap_loss(self.model, self.tap, fb, *(values or ()))
                return L.scaled(loss, w_main), npos, L.scaled(nll, w_tok)
            loss, npos, nll = anchored.tokenstein_loss(self.model, fb, w_main)
            return loss, npos, L.scaled(nll, w_tok)
        from .chunked import labelled_logprobs

        inputs, targets, mask = fb
        logp = labelled_logprobs(self.model, inputs, targets, mask)  # (B, T): one forward pass for every term
        nll, ntoks = L.nll(logp, mask)
        if self.cfg.loss.startswith("npo"):
            if ref is None:  # no cached reference given: compute it on this batch
                ref = L.sequence_logprobs(labelled_logprobs(self.model, inputs, targets, mask, reference=True), mask)
            loss = L.npo_from_sequences(L.sequence_logprobs(logp, mask), ref, beta=self.cfg.npo_beta)
        else:
            loss = L.ga(logp, mask)[0]
        loss = L.scaled(loss, w_main)
        if rnd is not None:
            r_inputs, r_targets, r_mask = rnd
            rlogp = labelled_logprobs(self.model, r_inputs, r_targets, r_mask)  # (B, T)
            loss = loss + self.cfg.random_weight * L.scaled(L.random_completion(rlogp, r_mask)[0], w_rnd)
        return loss, ntoks, L.scaled(nll, w_tok)

    def _retain_objective(self, rb, w=None):
        from . import losses as L

        from .chunked import labelled_logprobs, labelled_logprobs_and_kl

        inputs, targets, mask = rb
        if self.retain_term == "kl":  # one forward pass for the NLL and the KL term
            logp, kl = labelled_logprobs_and_kl(self.model, inputs, targets, mask)  # (B, T) each
        else:
            logp = labelled_logprobs(self.model, inputs, targets, mask)  # (B, T)
        nll, ntoks = L.nll(logp, mask)
        term = L.masked_mean(kl, mask)[0] if self.retain_term == "kl" else nll
        return self.cfg.retain_weight * L.scaled(term, w), ntoks, L.scaled(nll, w)

    def _nll(self, batch, w=None):
        from .losses import completion_nll, scaled

        nll, ntoks = completion_nll(self.model, *batch)
        return scaled(nll, w), ntoks

    # --- batches --------------------------------------------------------------------------------
    def _batch(self, stream: str, pool: list) -> list[tuple]:
        """This rank's pieces of the stream's next global batch: [(batch, token weight)], see :meth:`_share`."""
        return self._share([pool[i] for i in self.streams[stream].next_indices()])

    def _share(self, examples: list) -> list[tuple]:
        """[(batch of piece m of this rank's share of ``examples``, its token weight)], see :meth:`_weights`."""
        from .batches import make_batch

        return list(zip(map(make_batch, self.world.shard(examples)), self._weights(examples)))

    def _weights(self, examples: list, *, per_sequence: bool = False) -> list:
        """Per piece: S x its labelled tokens (or sequences) / the global batch's (S pieces over all ranks);
        [None] for a batch computed whole in one process."""
        from .distributed import labelled

        size = len if per_sequence else (lambda exs: sum(map(labelled, exs)))
        return [self.world.weight(size(part), size(examples)) for part in self.world.shard(examples)]

    def next_forget(self) -> list[tuple]:
        """[(forget batch, random-completion batch or None, :class:`ForgetAux`)] for the next step: one per piece
        of this rank's share."""
        import mlx.core as mx

        from .batches import truncate

        stream = self.streams["forget"]
        draw = stream.epoch * stream.n + stream.pos  # examples drawn before this batch: the rotation's position
        idx = stream.next_indices()
        examples = [self.forget[i] for i in idx]
        if self.twins is not None:
            from .anchored import anchored_batch
            from .twins import rotation

            n = len(self.twins.population)
            twins = [[self.twins.twin(i, k) for k in rotation(draw + b, self.cfg.twins, n)] for b, i in enumerate(idx)]
            return self._anchored_pieces(examples, twins)
        rnd = [(None, None)] * self.world.pieces
        if "random" in self.streams:
            from ..text.tokenizer import model_encoder

            other = self.streams["random"].next_indices()
            keep = len(model_encoder(self.tokenizer).prefix)  # a retain text's BOS never lands mid-sequence
            mixed = []
            for i, (ids, n_prompt), j in zip(idx, examples, other):
                if self.cfg.random_source == "retain":
                    tail = self.retain[j][0][keep:][: max(len(ids) - n_prompt, 1)]
                else:
                    j = j if j != i else (j + 1) % len(self.forget)  # never the record's own completion
                    tail = self.forget[j][0][self.forget[j][1]:]
                mixed.append(truncate(ids[:n_prompt] + tail, n_prompt, self.cfg.max_tokens, keep=keep))
            rnd = self._share(mixed)
        forget = self._share(examples)
        if not self.cfg.loss.startswith("npo"):
            return [(fb, r, ForgetAux(w_tok, w_tok, w_rnd)) for (fb, w_tok), (r, w_rnd) in zip(forget, rnd)]
        if self.npo_reference is None:
            self.npo_reference = self._npo_reference()
        refs = [self.npo_reference[mx.array(part)] for part in self.world.shard(idx)]  # (b,) per piece
        w_seq = self._weights(examples, per_sequence=True)
        return [(fb, r, ForgetAux(w_main, w_tok, w_rnd, ref))
                for (fb, w_tok), (r, w_rnd), w_main, ref in zip(forget, rnd, w_seq, refs)]

    def _anchored_pieces(self, examples: list, twins: list) -> list[tuple]:
        """[(anchored batch, None, :class:`ForgetAux`)] of this rank's pieces; the NLL is weighted by the piece's
        tokens (:meth:`_weights`). tokenstein: its two means by S x the piece's positions / the whole batch's.
        value_swap: every piece's error is divided by the whole batch's targets' squared norm, so the base
        model's targets of every piece are computed first (:func:`anchored.value_targets`) and their norms
        summed over pieces and ranks; the loss is then weighted by S."""
        import mlx.core as mx

        from . import anchored

        build = lambda exs, tws: anchored.anchored_batch(exs, tws, kind=self.cfg.loss,  # noqa: E731
                                                         suppress=self.cfg.suppress_word)
        if self.world.shards == 1:
            return [(build(examples, twins), None, None)]
        batches = [build(exs, tws) for exs, tws in zip(self.world.shard(examples), self.world.shard(twins))]
        w_toks = self._weights(examples)
        if self.tap is None:
            whole = anchored.position_counts(build(examples, twins))
            return [(b, None, ForgetAux(tuple(self.world.weight(n, total) for n, total in
                                              zip(anchored.position_counts(b), whole)), w_tok))
                    for b, w_tok in zip(batches, w_toks)]
        targets, norms = [], None
        for b in batches:
            t = anchored.value_targets(self.model, self.tap, b)
            n = {layer: anchored.squared_norm(v, b.weight) for layer, v in t.items()}
            norms = n if norms is None else {layer: norms[layer] + n[layer] for layer in n}
            mx.eval(t, norms)
            targets.append(t)
        layers = list(norms)
        norms = dict(zip(layers, mx.array(self.world.total([norms[layer].item() for layer in layers]),
                                          dtype=mx.float32)))
        w_main = mx.array(float(self.world.shards), dtype=mx.float32)
        return [(b, None, ForgetAux(w_main, w_tok, values=(t, norms))) for b, t, w_tok in zip(batches, targets, w_toks)]

    def _npo_reference(self):
        """log p_ref(completion | prompt) of every forget example, (n,) float32: the adapters-off model in eval
        mode (no dropout, so no random numbers drawn), computed once and kept in checkpoints. Batches of
        ``batch_size`` in record order; with N ranks, batch k is computed by rank k mod N and the results are
        summed over ranks, so every rank holds the same values as one process."""
        import mlx.core as mx

        from .batches import make_batch
        from .chunked import labelled_logprobs
        from .losses import sequence_logprobs

        n, b = len(self.forget), self.cfg.batch_size
        values = [0.0] * n
        self.model.eval()
        try:
            for k, start in enumerate(range(0, n, b)):
                if k % self.world.size != self.world.rank:
                    continue
                ids = list(range(start, min(start + b, n)))
                batch = make_batch([self.forget[i] for i in ids])
                seq = sequence_logprobs(labelled_logprobs(self.model, *batch, reference=True), batch[2])  # (b,)
                values[start : start + len(ids)] = seq.tolist()
        finally:
            self.model.train()
        return mx.array(self.world.total(values), dtype=mx.float32)

    # --- gradients ------------------------------------------------------------------------------
    @staticmethod
    def _pieces(fn, parts: list) -> tuple:
        """(outputs, gradient) of ``value_and_grad`` function ``fn`` summed over the pieces' arguments ``parts``,
        each piece evaluated before the next starts (so that only one piece's activations exist at a time)."""
        import mlx.core as mx
        from mlx.utils import tree_map

        outs, grads = None, None
        for args in parts:
            o, g = fn(*args)
            outs = o if outs is None else tuple(a + b for a, b in zip(outs, o))
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(outs, grads)
        return outs, grads

    def forget_gradient(self, parts: list) -> tuple[dict, dict]:
        """(flat gradient of the forget objective, {'loss', 'forget_nll', 'tokens'}) over the pieces of
        :meth:`next_forget`, averaged over ranks."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        (loss, ntoks, nll), grads = self._pieces(self.forget_grad_fn, parts)
        grads = self.world.average(grads)
        mx.eval(grads)
        n = self.world.shards
        loss, nll, ntoks = self.world.total([loss.item(), nll.item(), ntoks.item()])
        return dict(tree_flatten(grads)), {"loss": loss / n, "forget_nll": nll / n, "tokens": int(ntoks)}

    def compute_basis(self):
        """A fresh retain basis from ``project_k`` retain batches (gradients of the retain NLL, no dropout)."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from .projection import build_basis

        self.model.eval()
        try:
            grads = []
            for _ in range(self.cfg.project_k):
                _, g = self._pieces(self.nll_grad_fn, self._batch("basis", self.retain))
                g = self.world.average(g)
                mx.eval(g)
                grads.append(dict(tree_flatten(g)))
        finally:
            self.model.train()
        return build_basis(grads, self.cfg.project)

    def gradient(self, step: int) -> tuple[dict, dict]:
        """The flat gradient update ``step`` applies, before clipping, and the step's measurements."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from .projection import project

        grads, info = self.forget_gradient(self.next_forget())
        if self.cfg.project != "off":
            if self.basis is None or (step - 1) % self.cfg.project_every == 0:
                self.basis = self.compute_basis()
            grads, stats = project(grads, self.basis, conflict_only=self.cfg.project_conflict_only)
            info.update(stats)
        if self.retain:
            parts = self._batch("retain", self.retain)
            term = mx.array(0.0)
            if self.retain_term:
                (term, _, rnll), g_r = self._pieces(self.retain_grad_fn, parts)
                g_r = dict(tree_flatten(self.world.average(g_r)))
                mx.eval(g_r)
                grads = {name: g + g_r[name] for name, g in grads.items()}
            else:
                rnll = mx.array(0.0)
                for part in parts:
                    rnll = rnll + self._nll(*part)[0]
                    mx.eval(rnll)
            term, rnll = self.world.total([term.item(), rnll.item()])
            n = self.world.shards
            info["loss"] += term / n if self.retain_term else 0.0
            info["retain_nll"] = rnll / n
        return grads, info

    def _retain_collapse(self, retain_nll: float, step: int) -> str | None:
        """Why the retain NLL counts as collapsed (absolute threshold, or factor x its first value), or None."""
        if self.retain_baseline is None:
            self.retain_baseline = retain_nll
        limit = self.cfg.collapse_retain_nll
        if limit is not None and retain_nll > limit:
            return f"retain NLL {retain_nll:.3f} above {limit} at step {step}"
        factor = self.cfg.collapse_retain_factor
        if factor and retain_nll > factor * self.retain_baseline:
            return f"retain NLL {retain_nll:.3f} above {factor} x its first value {self.retain_baseline:.3f} at step {step}"
        return None

    def step(self) -> tuple[dict, tuple[str, int] | None]:
        """One update: (metrics record, None) or, when a guard stops it (no update made), (record,
        (reason, first bad step)) where parameters after ``first bad step`` updates are the suspect ones."""
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx.utils import tree_map_with_path

        k = self.step_done + 1
        t0 = time.perf_counter()
        mx.reset_peak_memory()
        mx.random.seed(_step_seed(self.cfg.seed, k))
        flat, info = self.gradient(k)
        tree = tree_map_with_path(lambda name, _: flat[name], self.model.trainable_parameters())
        clipped, norm = optim.clip_grad_norm(tree, self.cfg.max_grad_norm or math.inf)
        grad_norm = norm.item()
        lr = float(f"{self.schedule(k - 1).item():.7g}")  # float32 value, printed without float32 noise
        stop = None
        if not math.isfinite(info["loss"]) or not math.isfinite(grad_norm):
            bad_loss = not math.isfinite(info["loss"])
            # a non-finite loss indicts the current parameters (k - 1); a non-finite gradient only the update
            stop = (f"non-finite {'loss' if bad_loss else 'gradient norm'} at step {k}", k - 1 if bad_loss else k)
        elif self.cfg.stop_on_collapse and "retain_nll" in info:
            reason = self._retain_collapse(info["retain_nll"], k)
            stop = (reason, k - 1) if reason else None
        if stop is None:
            self.optimizer.update(self.model, clipped)
            mx.eval(self.model.trainable_parameters(), self.optimizer.state)
            self.step_done = k
        peak = mx.get_peak_memory()  # 0 from an allocator that does not count: recorded as None, not guessed
        rec = {"step": k, "epoch": round(self.streams["forget"].epochs_done, 4), "loss": info["loss"],
               "forget_nll": info["forget_nll"]}
        if "retain_nll" in info:
            rec["retain_nll"] = info["retain_nll"]
        rec.update({"grad_norm": grad_norm, "learning_rate": lr, "tokens": info["tokens"],
                    "step_seconds": round(time.perf_counter() - t0, 4), "peak_memory_gb": round(peak / 1e9, 4) if peak else None})
        for key in ("proj_cosine", "proj_removed_pct"):
            if key in info:
                rec[key] = info[key]
        rec = {k2: (None if isinstance(v, float) and not math.isfinite(v) else v) for k2, v in rec.items()}
        return rec, stop

    # --- state ----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """References to the state after the last completed step (mlx arrays are immutable: no copies)."""
        from mlx.utils import tree_map

        return {"params": self.model.trainable_parameters(), "opt": tree_map(lambda x: x, self.optimizer.state),
                "streams": {n: s.state() for n, s in self.streams.items()}, "basis": self.basis,
                "step": self.step_done}

    def restore(self, snap: dict) -> None:
        self.model.update(snap["params"])
        self.optimizer.state = snap["opt"]
        for n, s in snap["streams"].items():
            self.streams[n].load_state(s)
        self.basis, self.step_done = snap["basis"], snap["step"]

    def save(self, run_dir: Path) -> Path:
        state = {"streams": {n: s.state() for n, s in self.streams.items()}}
        basis = self.basis.arrays() if self.basis is not None else None
        extra = {"npo_reference": {"sequence_logprobs": self.npo_reference}} if self.npo_reference is not None else None
        return ckpt.save_checkpoint(run_dir, self.step_done, model=self.model, adapter_config=self.adapter_config,
                                    optimizer=self.optimizer, state=state, basis=basis, extra=extra)

    def load(self, path: Path) -> None:
        from mlx.utils import tree_flatten

        from .projection import RetainBasis, group_names

        state, basis = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer)
        for n, s in state["streams"].items():
            self.streams[n].load_state(s)
        self.step_done = int(state["step"])
        ref = ckpt.load_extra(path, "npo_reference")  # checkpoints from before the cache: made again when needed
        if ref is not None and self.cfg.loss.startswith("npo"):
            self.npo_reference = ref["sequence_logprobs"]
        if basis is not None and self.cfg.project != "off":
            names = group_names([n for n, _ in tree_flatten(self.model.trainable_parameters())], self.cfg.project)
            self.basis = RetainBasis.from_arrays(basis, names)

