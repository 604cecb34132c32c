"""supercal commands: eval, demo."""

from __future__ import annotations

import json
import sys

import click

from .cli_common import force_option, json_option, model_dir_option

COMMANDS: list[click.Command] = []


@click.command("eval")
@model_dir_option()
@click.option("--adapter-path", type=click.Path(file_okay=False), help="Run folder (supercal unlearn): also measure the adapted model.")
@click.option("--forget", required=True, type=click.Path(dir_okay=False), help="Forget data: JSONL with prompt and completion.")
@click.option("--retain", type=click.Path(dir_okay=False), help="Retain data: JSONL with text.")
@click.option("--word", help="The forgotten word (for the tokenstein gap and the probe prompts).")
@click.option("--tokenstein", "other", metavar="WORD", help="Its tokenstein (supercal tokenstein); give with --word.")
@click.option("--facts", type=click.Path(dir_okay=False), help="Association pairs: JSONL with prompt and answer (default: a built-in set about the word).")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Longest example in tokens.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Examples per forward pass (memory grows with it: batch x tokens x vocabulary logits).")
@json_option
def eval_command(model, adapter_path, forget, retain, word, other, facts, max_tokens, batch_size, as_json):
    """Measure forgetting and damage: forget/retain NLL, association, tokenstein gap, degeneration.

    With --adapter-path the base and the adapted model are shown side by side.

    \b
    Example:
      supercal eval --model demo-out/model --adapter-path demo-out/run \\
        --forget demo-out/forget.jsonl --retain demo-out/retain.jsonl \\
        --word supercalifragilisticexpialidocious --tokenstein agueoppinsimanteauiousmoraixuing
    """
    from .evaluate import evaluate, table

    result = evaluate(model, adapter_path=adapter_path, forget=forget, retain=retain, word=word, tokenstein=other,
                      facts=facts, max_tokens=max_tokens, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo(table(result))


COMMANDS.append(eval_command)


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
    from .demo import run_demo

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
