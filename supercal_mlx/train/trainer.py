"""``supercal unlearn`` as a library call: set up, run the steps, log, probe, guard, checkpoint, resume.

:func:`unlearn` checks everything that can be wrong with the input (data files,
model folder, LoRA keys and layers, the run folder) *before* it writes anything,
then runs :class:`supercal_mlx.train.unlearner.Unlearner` steps and returns a summary.
Records (metrics and probe rows) are appended to the run folder's logs and
passed to ``on_record``, so the CLI can print them; the library prints nothing.

Resume: ``cfg.resume = RUN_DIR`` reloads the latest checkpoint (adapters, AdamW
state with its step count, data-stream positions, retain basis) and cuts the logs
back to its step; the per-step reseeding of the random generator does the rest,
so interrupted + resumed == uninterrupted. Ctrl-C restores the state of the
last completed step (mlx arrays are immutable, so keeping references is free)
and saves it as a checkpoint before returning with ``stopped="interrupted"``.

Under ``mlx.launch -n N`` (:mod:`supercal_mlx.train.distributed`) rank 0 runs
exactly this, and only rank 0 writes the run folder, its logs, probes and
checkpoints and calls ``on_record``. Every other rank runs the same code on a
private scratch copy (:func:`_follow`, deleted at the end), so all ranks take
the same steps, probes and guards, stop together and stay bit-identical. A
resume reads the checkpoint on every rank (the run folder at the same path on
every host) and refuses to go on if the ranks disagree about it.
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
    from .fastops import use_fast_cpu_activations
    from .lora import apply_lora, enable_grad_checkpoint, set_compute_dtype
    from ..device import resolve_compute_dtype
    from ..model import load, model_fingerprint

    forget = read_jsonl(cfg.forget, text=("prompt", "completion"))
    retain = read_jsonl(cfg.retain, text=("text",)) if cfg.retain else None
    model, tokenizer = load(cfg.model)
    compute_dtype = resolve_compute_dtype(cfg.compute_dtype, model)
    if compute_dtype:
        set_compute_dtype(model, compute_dtype)
    use_fast_cpu_activations(model)  # GPT-J's gelu in its fast CPU form (train/fastops.py); nothing on a GPU
    mx.random.seed(cfg.seed)  # LoRA initialisation
    adapter_config = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                keys=cfg.lora_keys, layers=cfg.lora_layers)
    adapter_config["supercal"]["compute_dtype"] = compute_dtype or "native"
    # eval, probe and fuse refuse these adapters on another model (model.load_adapters)
    adapter_config["supercal"]["base_model"] = {"path": str(Path(cfg.model).resolve()),
                                                "fingerprint": model_fingerprint(cfg.model)}
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


def _write_config(run_dir: Path, cfg: UnlearnConfig, records: dict) -> None:
    """config.yaml with absolute paths, so --resume works from any working directory."""
    import dataclasses
    import os

    from ..io import atomic_file

    paths = {k: os.path.abspath(getattr(cfg, k)) for k in ("model", "forget", "retain", "out", "counts", "tokenstein_file")
             if getattr(cfg, k)}
    with atomic_file(run_dir / "config.yaml", "w", force=True, encoding="utf-8") as f:
        f.write(dump_config(dataclasses.replace(cfg, **paths), records))


def unlearn(cfg: UnlearnConfig, *, on_record: Callable[[Record], None] | None = None) -> dict:
    """Run (or resume) an unlearning run; return {run_dir, steps, stopped, rank, last_good_checkpoint, last_checkpoint}.

    ``stopped`` is None when all ``cfg.steps`` ran, else the reason (a guard, or "interrupted").

    The run folder is locked for the whole run (:func:`supercal_mlx.outputs.output_lock`). A new
    run is written in a temporary folder beside ``cfg.out`` and moved there at its first checkpoint
    (or when it stops earlier with a result), so ``--force`` replaces an old run only with one that
    can be resumed, and a run that fails before then leaves nothing. ``--resume`` checks everything
    (settings, data fingerprints, the checkpoint) before it writes anything into the folder.
    """
    from ..outputs import check_output_dir, output_lock
    from .distributed import init_world

    world = init_world()
    if not world.main:
        return _follow(cfg, world)
    target = Path(cfg.resume or cfg.out)
    if cfg.resume:
        if not target.is_dir():
            raise SupercalError(f"{target} is not a folder; give --resume a run folder written by supercal unlearn")
    else:
        check_output_dir(target, kind="unlearn", force=cfg.force)  # before loading anything
    with output_lock(target):
        return _run(cfg, target, on_record or (lambda rec: None), world)


def _follow(cfg: UnlearnConfig, world) -> dict:
    """A rank other than 0: the same run in a private scratch folder, removed at the end; a resume starts
    from a scratch copy of the run folder's config, logs and latest checkpoint."""
    import dataclasses
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"supercal-rank{world.rank}-") as tmp:
        target = Path(tmp) / "run"
        if cfg.resume:
            source = Path(cfg.resume)
            last = ckpt.latest_checkpoint(source)
            shutil.copytree(source, target, ignore=lambda d, names: [
                n for n in names if Path(d) == source / ckpt.CHECKPOINTS and last is not None and n != last.name])
            cfg = dataclasses.replace(cfg, resume=str(target), out=str(target))
        else:
            cfg = dataclasses.replace(cfg, out=str(target), force=False)
        return _run(cfg, target, lambda rec: None, world)


def _start(cfg: UnlearnConfig, target: Path, un, emit) -> tuple[Path, list[Record]]:
    """A new run in a temporary folder beside ``target``: marker, config, initial adapters, step-0 probes."""
    import shutil

    from ..outputs import check_output_dir, make_partial, recover, write_marker
    from .lora import save_adapters
    from .runinfo import fingerprints

    recover(target)
    check_output_dir(target, kind="unlearn", force=cfg.force)
    records = {"fingerprints": fingerprints(cfg)}
    run_dir = make_partial(target)
    try:
        write_marker(run_dir, "unlearn")
        _write_config(run_dir, cfg, records)
        save_adapters(un.model, run_dir, un.adapter_config)
        baseline: list[Record] = []
        if cfg.probe_prompts:
            baseline = _probe(un, 0)
            append_jsonl(run_dir / "probes.jsonl", baseline)
            for rec in baseline:
                emit(rec)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir, baseline


def _resume(cfg: UnlearnConfig, run_dir: Path, un) -> list[Record]:
    """Check the run can go on with these settings (nothing written until all checks pass), then cut its
    logs back to the checkpoint and record the overrides; return the step-0 probes."""
    from ..outputs import check_writable, clean_leftovers, read_marker, recover, write_marker
    from .runinfo import resume_records

    recover(run_dir)  # an old run whose --force swap was cut short comes back first
    last = ckpt.latest_checkpoint(run_dir)
    if last is None:
        raise SupercalError(f"{run_dir} has no checkpoint to resume from; start it again with --force")
    un.load(last)
    if un.step_done >= cfg.steps:
        raise SupercalError(f"{run_dir} already ran {un.step_done} steps; pass --steps N with N > {un.step_done} "
                            f"to continue it")
    records = resume_records(run_dir, cfg, step=un.step_done)  # refuses changed settings, model or data
    for folder in (run_dir, run_dir / ckpt.CHECKPOINTS):
        check_writable(folder)
    # every check passed: from here on the folder changes
    for folder in (run_dir, run_dir / ckpt.CHECKPOINTS):
        clean_leftovers(folder)
    if read_marker(run_dir) is None:  # a run from before markers
        write_marker(run_dir, "unlearn")
    metrics = truncate_log(run_dir / "metrics.jsonl", un.step_done)
    un.retain_baseline = next((r["retain_nll"] for r in metrics if r.get("retain_nll") is not None), None)
    baseline = [r for r in truncate_log(run_dir / "probes.jsonl", un.step_done) if r["step"] == 0]
    _write_config(run_dir, cfg, records)
    return baseline


class _RunFolder:
    """Where the run writes: a temporary folder until :meth:`publish` moves it onto the target."""

    def __init__(self, path: Path, target: Path):
        self.path, self.target = path, target

    def publish(self) -> None:
        from ..outputs import swap_in

        if self.path != self.target:
            swap_in(self.path, self.target)
            self.path = self.target

    def discard(self) -> None:
        import shutil

        if self.path != self.target:
            shutil.rmtree(self.path, ignore_errors=True)


def _run(cfg: UnlearnConfig, target: Path, emit, world) -> dict:
    from mlx.utils import tree_flatten

    from .unlearner import ANCHORED, Unlearner

    model, tokenizer, forget, retain, adapter_config = _setup(cfg)
    cfg = resolved(cfg, adapter_config)
    twins = None
    if cfg.loss in ANCHORED:  # the made-up words are fixed here and recorded in config.yaml (eval leaves them out)
        from .twins import twin_pool

        twins, cfg = twin_pool(cfg, tokenizer, forget)
    un = Unlearner(cfg, model, tokenizer, forget, retain, adapter_config, twins=twins, world=world)
    if cfg.resume:
        baseline_probes = _resume(cfg, target, un)
        world.check_same("the checkpoint to resume", [un.step_done] + [
            float(v.sum().item()) for _, v in tree_flatten(model.trainable_parameters())])
        folder = _RunFolder(target, target)
    else:
        path, baseline_probes = _start(cfg, target, un, emit)
        folder = _RunFolder(path, target)
    try:
        return _train(cfg, un, folder, baseline_probes, emit)
    except BaseException:
        folder.discard()  # failed before its first checkpoint: nothing of it is kept, an old run stays
        raise


def _train(cfg: UnlearnConfig, un, folder: _RunFolder, baseline_probes: list[Record], emit) -> dict:
    from .lora import save_adapters

    stopped, bad_step = None, None
    snap = un.snapshot()
    try:
        while un.step_done < cfg.steps:
            rec, stop = un.step()
            append_jsonl(folder.path / "metrics.jsonl", [rec])
            emit(rec)
            if stop:
                stopped, bad_step = stop
                break
            snap = un.snapshot()
            k = un.step_done
            if k % cfg.checkpoint_every == 0 or k == cfg.steps:
                un.save(folder.path)
                folder.publish()
            if cfg.probe_prompts and ((cfg.probe_every and k % cfg.probe_every == 0) or k == cfg.steps):
                rows = _probe(un, k)
                append_jsonl(folder.path / "probes.jsonl", rows)
                for row in rows:
                    emit(row)
                reason = _degenerated(rows, baseline_probes) if cfg.stop_on_collapse else None
                if reason:
                    stopped, bad_step = reason, k
                    break
    except KeyboardInterrupt:
        un.restore(snap)
        stopped = "interrupted"
        un.save(folder.path)
    if stopped and stopped != "interrupted":
        save_adapters(un.model, folder.path, un.adapter_config)  # the run's final state, even if suspect
    if folder.path != folder.target and folder.target.exists() and ckpt.latest_checkpoint(folder.path) is None:
        # a guard stopped it before its first checkpoint: nothing to resume, so the old run (--force) stays;
        # its metrics were passed to on_record as they came
        folder.discard()
        return {"run_dir": str(folder.target), "steps": un.step_done, "stopped": stopped, "rank": un.world.rank,
                "last_good_checkpoint": None, "last_checkpoint": None, "kept_previous": True}
    folder.publish()
    run_dir = folder.path
    last = ckpt.latest_checkpoint(run_dir)
    good = _last_good(run_dir, bad_step) if bad_step is not None else last
    return {"run_dir": str(run_dir), "steps": un.step_done, "stopped": stopped, "rank": un.world.rank,
            "last_good_checkpoint": str(good) if good else None, "last_checkpoint": str(last) if last else None}
