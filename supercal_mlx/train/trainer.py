"""``supercal unlearn`` as a library call: set up, run the steps, log, probe, guard, checkpoint, resume.

:func:`unlearn` checks everything that can be wrong with the input (data files,
model folder, LoRA keys and layers, the run folder) *before* it writes anything,
then runs :class:`supercal_mlx.unlearner.Unlearner` steps and returns a summary.
Records (metrics and probe rows) are appended to the run folder's logs and
passed to ``on_record``, so the CLI can print them; the library prints nothing.

Resume: ``cfg.resume = RUN_DIR`` reloads the latest checkpoint (adapters, AdamW
state with its step count, data-stream positions, retain basis) and cuts the logs
back to its step; the per-step reseeding of the random generator does the rest,
so interrupted + resumed == uninterrupted. Ctrl-C restores the state of the
last completed step (mlx arrays are immutable, so keeping references is free)
and saves it as a checkpoint before returning with ``stopped="interrupted"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import checkpoint as ckpt
from ..io import append_jsonl, truncate_log
from .config import UnlearnConfig, dump_config
from ..errors import SupercalError

Record = dict


def _named(path, fn, *args, **kw):
    """Call an encoder; its 'record N: ...' errors get the file name in front."""
    try:
        return fn(*args, **kw)
    except SupercalError as e:
        raise SupercalError(f"{path}: {e}") from None


def _setup(cfg: UnlearnConfig):
    """(model, tokenizer, forget examples, retain examples, adapter_config); validates all input."""
    import mlx.core as mx

    from .batches import encode_completions, encode_texts
    from ..io import read_jsonl
    from .lora import apply_lora, enable_grad_checkpoint, set_compute_dtype
    from ..device import resolve_compute_dtype
    from ..model import load

    forget = read_jsonl(cfg.forget, required=("prompt", "completion"))
    retain = read_jsonl(cfg.retain, required=("text",)) if cfg.retain else None
    model, tokenizer = load(cfg.model)
    compute_dtype = resolve_compute_dtype(cfg.compute_dtype, model)
    if compute_dtype:
        set_compute_dtype(model, compute_dtype)
    mx.random.seed(cfg.seed)  # LoRA initialisation
    adapter_config = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                keys=cfg.lora_keys, layers=cfg.lora_layers)
    adapter_config["supercal"]["compute_dtype"] = compute_dtype or "native"
    if cfg.grad_checkpoint:
        enable_grad_checkpoint(model)
    forget_ex = _named(cfg.forget, encode_completions, forget, tokenizer, max_tokens=cfg.max_tokens)
    retain_ex = _named(cfg.retain, encode_texts, retain, tokenizer, max_tokens=cfg.max_tokens) if retain else None
    model.train()
    return model, tokenizer, forget_ex, retain_ex, adapter_config


def _probe(un, step: int) -> list[Record]:
    """Probe rows after ``step`` updates; dropout off; the same seed at every step, so rows differ
    between steps because the model changed, not because the sampler drew differently."""
    from ..runs.probes import generate

    cfg = un.cfg
    un.model.eval()
    try:
        rows = generate(un.model, un.tokenizer, cfg.probe_prompts, temps=cfg.probe_temps, samples=cfg.probe_samples,
                        max_tokens=cfg.probe_max_tokens, seed=cfg.seed)
    finally:
        un.model.train()
    return [{"step": step, "prompt": r.prompt, "temperature": r.temperature, "sample": r.sample,
             "response": r.response} for r in rows]


def _degenerated(rows: list[Record], baseline: list[Record]) -> str | None:
    """A reason when a probe response degenerated that was fine before training (step 0)."""
    from ..runs.degeneration import is_degenerate

    was = {(r["prompt"], r["temperature"], r["sample"]): is_degenerate(r["response"]) for r in baseline}
    for r in rows:
        if is_degenerate(r["response"]) and not was.get((r["prompt"], r["temperature"], r["sample"]), False):
            return (f"probe output degenerated at step {r['step']} (prompt {r['prompt']!r}, temperature "
                    f"{r['temperature']}): {r['response'][:60]!r}")
    return None


def _last_good(run_dir: Path, before: int) -> Path | None:
    """The newest checkpoint holding parameters from before step ``before``."""
    root = run_dir / ckpt.CHECKPOINTS
    good = [p for p in sorted(root.glob("step-*")) if (p / "state.json").exists() and int(p.name[5:]) < before]
    return good[-1] if good else None


def resolved(cfg: UnlearnConfig, adapter_config: dict) -> UnlearnConfig:
    """``cfg`` with the LoRA keys ``auto`` resolved to, as config.yaml records them (a resumed run needs the
    same keys). ``compute_dtype: auto`` stays a policy (a run resumed on another device resolves it again);
    adapter_config.json's ``supercal.compute_dtype`` says what it resolved to."""
    import dataclasses

    return dataclasses.replace(cfg, lora_keys=list(adapter_config["lora_parameters"]["keys"]))


def _write_config(run_dir: Path, cfg: UnlearnConfig) -> None:
    """config.yaml with absolute paths, so --resume works from any working directory."""
    import dataclasses
    import os

    from ..io import atomic_file

    paths = {k: os.path.abspath(getattr(cfg, k)) for k in ("model", "forget", "retain", "out", "counts", "tokenstein_file")
             if getattr(cfg, k)}
    with atomic_file(run_dir / "config.yaml", "w", force=True, encoding="utf-8") as f:
        f.write(dump_config(dataclasses.replace(cfg, **paths)))


def unlearn(cfg: UnlearnConfig, *, on_record: Callable[[Record], None] | None = None) -> dict:
    """Run (or resume) an unlearning run; return {run_dir, steps, stopped, last_good_checkpoint, last_checkpoint}.

    ``stopped`` is None when all ``cfg.steps`` ran, else the reason (a guard, or "interrupted").
    """
    from .lora import save_adapters
    from .unlearner import ANCHORED, Unlearner

    emit = on_record or (lambda rec: None)
    model, tokenizer, forget, retain, adapter_config = _setup(cfg)
    cfg = resolved(cfg, adapter_config)
    twins = None
    if cfg.loss in ANCHORED:  # the made-up words are fixed here and recorded in config.yaml (eval leaves them out)
        from .twins import twin_pool

        twins, cfg = twin_pool(cfg, tokenizer, forget)
    un = Unlearner(cfg, model, tokenizer, forget, retain, adapter_config, twins=twins)
    baseline_probes: list[Record] = []
    if cfg.resume:
        run_dir = Path(cfg.resume)
        last = ckpt.latest_checkpoint(run_dir)
        if last is None:
            raise SupercalError(f"{run_dir} has no checkpoint to resume from; start it again with --force")
        un.load(last)
        if un.step_done >= cfg.steps:
            raise SupercalError(f"{run_dir} already ran {un.step_done} steps; pass --steps N with N > {un.step_done} "
                                f"to continue it")
        metrics = truncate_log(run_dir / "metrics.jsonl", un.step_done)
        un.retain_baseline = next((r["retain_nll"] for r in metrics if r.get("retain_nll") is not None), None)
        baseline_probes = [r for r in truncate_log(run_dir / "probes.jsonl", un.step_done) if r["step"] == 0]
        _write_config(run_dir, cfg)
    else:
        run_dir = ckpt.prepare_run_dir(cfg.out, force=cfg.force)
        _write_config(run_dir, cfg)
        save_adapters(model, run_dir, adapter_config)
        if cfg.probe_prompts:
            baseline_probes = _probe(un, 0)
            append_jsonl(run_dir / "probes.jsonl", baseline_probes)
            for rec in baseline_probes:
                emit(rec)
    stopped, bad_step = None, None
    snap = un.snapshot()
    try:
        while un.step_done < cfg.steps:
            rec, stop = un.step()
            append_jsonl(run_dir / "metrics.jsonl", [rec])
            emit(rec)
            if stop:
                stopped, bad_step = stop
                break
            snap = un.snapshot()
            k = un.step_done
            if k % cfg.checkpoint_every == 0 or k == cfg.steps:
                un.save(run_dir)
            if cfg.probe_prompts and ((cfg.probe_every and k % cfg.probe_every == 0) or k == cfg.steps):
                rows = _probe(un, k)
                append_jsonl(run_dir / "probes.jsonl", rows)
                for row in rows:
                    emit(row)
                reason = _degenerated(rows, baseline_probes) if cfg.stop_on_collapse else None
                if reason:
                    stopped, bad_step = reason, k
                    break
    except KeyboardInterrupt:
        un.restore(snap)
        stopped = "interrupted"
        un.save(run_dir)
    if stopped and stopped != "interrupted":
        save_adapters(model, run_dir, adapter_config)  # the run's final state, even if suspect
    last = ckpt.latest_checkpoint(run_dir)
    good = _last_good(run_dir, bad_step) if bad_step is not None else last
    return {"run_dir": str(run_dir), "steps": un.step_done, "stopped": stopped,
            "last_good_checkpoint": str(good) if good else None, "last_checkpoint": str(last) if last else None}
