"""supercal commands: demo (the offline end-to-end experiment)."""

from __future__ import annotations

import sys

import click

from .common import force_option

COMMANDS: list[click.Command] = []


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False), help="Folder for everything the demo writes.")
@click.option("--fast", is_flag=True, help="A tiny model and few steps (CI): end to end in about a minute.")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Unlearning runs per method, seeds 0..N-1, all from the same pretrained model  [default: 3; 1 with --fast]")
@click.option("--pretrain-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pretrained models (seeds 0..M-1; each cached); every method and seed runs on each.")
@click.option("--methods", default=None, metavar="LIST",
              help="Comma-separated methods: ga, graddiff, npo, tokenstein, value_swap  [default: graddiff,tokenstein]")
@click.option("--compare", is_flag=True,
              help="Compare all five methods from the same start (about 2.5x the default's time).")
@force_option
def demo_command(out, fast, seeds, pretrain_seeds, methods, compare, force):
    """Run the whole experiment offline on a small model: it knows the word, forgets it, and shows what it does instead.

    Pretrains a small GPT-J on a synthetic corpus (cached for the next run), then runs
    tokens, count, tokensteins, negatives, retain, unlearn (graddiff and tokenstein, or
    all five methods with --compare; every seed),
    eval and report, and prints the final table (mean ± sd over seeds) and the word's
    answers. Everything lands in --out (results.json, results.md, runs/<method>/seed-<k>/).

    \b
    Example:
      supercal demo --compare --seeds 3
    """
    from ..demo.run import run_demo

    def log(msg: str) -> None:
        click.echo(f"demo: {msg}", err=True)

    def pretrain_step(rec: dict) -> None:
        if rec["step"] == 1 or rec["step"] % 50 == 0:
            click.echo(f"demo: pretraining step {rec['step']}: loss {rec['loss']:.3f} ({rec['seconds']:.0f} s)", err=True)

    if compare and methods:
        raise click.UsageError("give --compare (all five methods) or --methods LIST, not both")
    chosen = "all" if compare else [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    res = run_demo(out, fast=fast, seeds=seeds, pretrain_seeds=pretrain_seeds, methods=chosen, force=force, log=log,
                   on_pretrain=pretrain_step)
    doc = res["results"]
    n_runs = doc["seeds"] * doc["pretrain_seeds"]
    click.echo(f"\nword: {res['word']}   {len(res['tokensteins'])} tokensteins, e.g. {', '.join(res['tokensteins'][:3])}")
    click.echo(f"mean ± sd over {n_runs} run(s) per method\n")
    click.echo(res["tables"]["final"])
    click.echo("\nThe word's answers (seed 0):\n")
    click.echo(res["tables"]["answers"])
    secs = res["seconds"]
    click.echo(f"\n{secs['total']:.0f} s in all; everything is in {res['out']} (results.json, results.md, runs/)")
    sys.stdout.flush()


COMMANDS.append(demo_command)
