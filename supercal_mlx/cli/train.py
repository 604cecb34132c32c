"""supercal commands: train (unlearn).

The options of ``unlearn`` are generated from :class:`supercal_mlx.train.config.UnlearnConfig`
and its fields' metadata (``type``, ``path``, ``choices``, ...),
so a setting has one name, one help text and one default, whether it comes from
the command line or a YAML file. Every option defaults to "not given": only the
values the user typed (click's parameter source) override the config file.
"""

from __future__ import annotations

import sys

import click

COMMANDS: list[click.Command] = []

_CLICK_TYPES = {"int": int, "float": float}  # list, floats and layers options take text that config.py parses
_PATHS = {"dir": {"file_okay": False}, "file": {"dir_okay": False}, "any": {}}


def _config_options(fn):
    """One click option per UnlearnConfig field (``lora_rank`` -> ``--lora-rank``)."""
    from ..train.config import FIELDS

    for name, f in reversed(list(FIELDS.items())):
        meta = f.metadata
        flag = meta.get("cli") or "--" + name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = meta["help"] + (f" [default: {shown}]" if shown is not None and shown not in ("", []) and
                                    shown is not False else "")
        kw: dict = {"default": None, "help": help_text}
        if meta["type"] == "bool":
            decl = f"{flag}/--no-{flag[2:]}" if meta.get("negatable", True) else flag
            fn = click.option(decl, name, is_flag=True, default=None, help=help_text)(fn)
            continue
        if meta.get("multiple"):
            kw.update(multiple=True, default=())
        if meta.get("choices"):
            kw["type"] = click.Choice(meta["choices"])
        elif "path" in meta:
            kw["type"] = click.Path(**_PATHS[meta["path"]])
        elif meta["type"] in _CLICK_TYPES:
            kw["type"] = _CLICK_TYPES[meta["type"]]
        fn = click.option(flag, name, metavar=meta.get("metavar"), **kw)(fn)
    return fn


def format_record(rec: dict) -> str:
    """One console line: the Hugging Face Trainer's familiar dict for metrics, a short line for probes."""
    if "response" in rec:
        return f"[probe step {rec['step']} t={rec['temperature']} #{rec['sample']}] {rec['prompt']!r} -> {rec['response']!r}"
    out = {"loss": _r(rec["loss"], 4), "grad_norm": _r(rec["grad_norm"], 4),
           "learning_rate": float(f"{rec['learning_rate']:.3g}"), "epoch": _r(rec["epoch"], 2),
           "forget_nll": _r(rec["forget_nll"], 4)}
    if "retain_nll" in rec:
        out["retain_nll"] = _r(rec["retain_nll"], 4)
    return str(out)


def _r(x, n):
    return None if x is None else round(x, n)


@click.command("unlearn")
@_config_options
@click.pass_context
def unlearn_command(ctx, **options):
    """Teach a model to forget: LoRA + gradient ascent / NPO on forget data, optionally
    projected away from retain gradients. Writes RUN_DIR (--out) with adapters that
    mlx_lm.load(model, adapter_path=RUN_DIR) reads, metrics.jsonl, probes.jsonl, checkpoints.

    Every option is also a key of the --config YAML file (lora_rank: 8); options given
    on the command line win. --resume RUN_DIR continues an interrupted run.

    \b
    Example:
      supercal unlearn --model gptj-mlx --forget forget.jsonl --retain retain.jsonl \\
          --out runs/npo --loss npo --project per-layer --steps 30 \\
          --probe-prompt "The word is" --probe-every 5
    """
    from click.core import ParameterSource

    from ..train.config import load_config
    from ..train.trainer import unlearn

    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    cfg = load_config(**given)
    summary = unlearn(cfg, on_record=lambda rec: click.echo(format_record(rec)))
    run_dir, stopped = summary["run_dir"], summary["stopped"]
    if summary["rank"] != 0:  # under mlx.launch: rank 0 speaks for all
        sys.exit(130 if stopped == "interrupted" else 1 if stopped else 0)
    if stopped == "interrupted":
        click.echo(f"Interrupted after step {summary['steps']}; checkpoint saved. Continue with: "
                   f"supercal unlearn --resume {run_dir}", err=True)
        sys.exit(130)
    if stopped:
        good = summary["last_good_checkpoint"] or "none (it went wrong before the first checkpoint)"
        click.echo(f"Stopped: {stopped}. Last good checkpoint: {good}", err=True)
        if summary.get("kept_previous"):
            click.echo(f"The previous run in {run_dir} was kept: this one stopped before its first checkpoint.", err=True)
        sys.exit(1)
    click.echo(f"Done: {summary['steps']} steps; adapters in {run_dir} (mlx_lm.load(model, adapter_path='{run_dir}'))")


COMMANDS.append(unlearn_command)
