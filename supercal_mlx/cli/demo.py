"""supercal commands: demo (the offline end-to-end experiment)."""

from __future__ import annotations

import sys

import click

from .common import force_option

COMMANDS: list[click.Command] = []


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False), help="Folder for everything the demo writes.")
@click.option("--fast", is_flag=True, help="A tiny model and few steps (CI): end to end in well under a minute.")
@click.option("--compare", is_flag=True, help="Also run plain gradient ascent (no retain data, no projection) and show it beside.")
@force_option
def demo_command(out, fast, compare, force):
    """Run the whole experiment offline on a small model: it knows the word, forgets it, and shows what it does instead.

    Pretrains a small GPT-J on a synthetic corpus (cached for the next run), then runs
    tokens, count, tokenstein, negatives, retain, probe, unlearn, eval and report, and
    prints the final table and the probes before and after. Everything lands in --out.

    \b
    Example:
      supercal demo --compare
    """
    from ..demo.run import run_demo

    def log(msg: str) -> None:
        click.echo(f"demo: {msg}", err=True)

    def pretrain_step(rec: dict) -> None:
        if rec["step"] == 1 or rec["step"] % 25 == 0:
            click.echo(f"demo: pretraining step {rec['step']}: loss {rec['loss']:.3f} ({rec['seconds']:.0f} s)", err=True)

    res = run_demo(out, fast=fast, compare=compare, force=force, log=log, on_pretrain=pretrain_step)
    click.echo(f"\nword: {res['word']}   tokenstein: {res['tokenstein']}\n")
    click.echo(res["tables"]["final"])
    click.echo("\nProbes before and after unlearning:\n")
    click.echo(res["tables"]["probes"])
    secs = res["seconds"]
    click.echo(f"\n{secs['total']:.0f} s in all; everything is in {res['out']} (results.md, eval.json, run/report/)")
    sys.stdout.flush()


COMMANDS.append(demo_command)
