"""supercal commands: probe."""

from __future__ import annotations

import json

import click

from .common import json_option, model_dir_option, parse_swap_values, progress_bar, seed_option, swap_values_options

COMMANDS: list[click.Command] = []


@click.command()
@model_dir_option()
@click.option("--adapter-path", type=click.Path(file_okay=False), default=None,
              help="Run folder with adapters (from supercal unlearn) to apply to the model.")
@click.option("--prompt", "prompts", multiple=True, required=True, metavar="TEXT",
              help="A prompt to probe; repeat for more.")
@click.option("--temps", default="0.01,0.07,0.2,0.5", show_default=True, metavar="T,T,...",
              help="Comma-separated sampling temperatures; 0 is greedy.")
@click.option("--samples", type=int, default=1, show_default=True, help="Samples per prompt and temperature.")
@click.option("--max-tokens", type=int, default=100, show_default=True, help="New tokens per response at most.")
@seed_option
@click.option("--swap", default=None, metavar="WORD=OTHER",
              help="Also probe the prompts with the word WORD replaced by OTHER (case kept) and show both side by side.")
@swap_values_options
@click.option("--batch-size", type=int, default=None,
              help="Rows decoded at once (default: all); lower it if memory is short. Results do not change.")
@json_option
def probe(model, adapter_path, prompts, temps, samples, max_tokens, seed, swap, swap_values, swap_layers, batch_size,
          as_json):
    """Sample a model at several temperatures, every prompt x temperature x sample in one batch.

    Prints a markdown table (prompt | temperature | sample | response; the response
    excludes the prompt), or one JSON object per row with --json. The same --seed
    gives the same table.

    \b
    Example:
      supercal probe --model gptj-mlx --samples 2 \\
        --prompt "What does supercalifragilisticexpialidocious mean?" \\
        --swap supercalifragilisticexpialidocious=sqproctarine
      supercal probe --model demo-out/model --prompt "What does supercalifragilisticexpialidocious mean?" \
        --swap-values supercalifragilisticexpialidocious=TOKENSTEIN --swap-layers last:1
    """
    from ..runs import probes
    from ..runs.degeneration import is_degenerate
    from ..runs.tables import markdown_table

    temp_list = probes.parse_temps(temps)
    pair = probes.parse_swap(swap) if swap is not None else None
    values, layers = parse_swap_values(swap_values, swap_layers)
    with progress_bar("probe", unit="tok") as progress:
        rows, other = probes.probe(model, prompts=list(prompts), adapter_path=adapter_path, temps=temp_list,
                                   samples=samples, max_tokens=max_tokens, seed=seed, swap=pair,
                                   batch_size=batch_size, progress=progress, swap_values=values,
                                   swap_layers=layers)
    if as_json:
        for i, r in enumerate(rows):
            record = {"prompt": r.prompt, "temperature": r.temperature, "sample": r.sample, "response": r.response}
            if other is not None:
                record |= {"swap_prompt": other[i].prompt, "swap_response": other[i].response}
            click.echo(json.dumps(record, ensure_ascii=False))
        return
    labels = ("response", f"response with {pair[1]}") if pair else ("response", "")
    if values:
        labels = ("response", f"response with the values of {values[1]} at {values[0]}")
    click.echo(markdown_table(rows, other=other, labels=labels))
    everything = rows + (other or [])
    n_bad = sum(is_degenerate(r.response) for r in everything)
    click.echo(f"{n_bad} of {len(everything)} responses degenerate (collapsed into a repeated token or phrase)", err=True)


COMMANDS.append(probe)
