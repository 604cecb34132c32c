"""supercal commands that read a model or a finished run folder: eval, fuse, report."""

from __future__ import annotations

import json

import click

from ..errors import SupercalError
from .common import (force_option, json_option, model_dir_option, output_option, parse_swap_values, seed_option,
                     swap_values_options)


@click.command("fuse")
@model_dir_option(help="The base MLX model folder the adapters were trained on.")
@click.option("--adapter-path", required=True, type=click.Path(file_okay=False),
              help="Run folder with adapters.safetensors + adapter_config.json (from supercal unlearn).")
@output_option(help="Folder for the standalone fused model.")
@click.option("--dequantize", is_flag=True, help="Write full-precision weights even if the base is quantized.")
@click.option("--hf-names", is_flag=True,
              help="Name weights as Hugging Face transformers expects (transformer.h.N...), so GPTJForCausalLM reads them.")
@force_option
def fuse_command(model, adapter_path, out, dequantize, hf_names, force):
    """Fold LoRA adapters into the base weights: a standalone model folder.

    mlx_lm.load reads the result either way; with --hf-names, transformers'
    GPTJForCausalLM.from_pretrained reads it too.

    Example: supercal fuse --model gptj-mlx --adapter-path runs/ga --out gptj-forgot --hf-names
    """
    from ..runs.fuse import fuse

    path = fuse(model, adapter_path, out, dequantize=dequantize, hf_names=hf_names, force=force)
    click.echo(f"fused model written to {path}")


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@output_option(required=False, help="Folder for the plots and summary.md (default RUN_DIR/report).")
@force_option
def report_command(run_dir, out, force):
    """Plots (loss, NLL, grad norm, learning rate, per-layer projection) and summary.md of a run folder.

    The plots need matplotlib (pip install 'supercal-mlx[plot]'); without it only
    summary.md is written, and a line on stderr says so.

    Example: supercal report runs/ga && open runs/ga/report/summary.md
    """
    from ..runs.report import NO_PLOTS, make_report, plots_available

    for path in make_report(run_dir, out=out, force=force):
        click.echo(str(path))
    if not plots_available():
        click.echo(NO_PLOTS, err=True)


@click.command("eval")
@model_dir_option()
@click.option("--adapter-path", type=click.Path(file_okay=False), help="Run folder (supercal unlearn): also measure the adapted model.")
@click.option("--forget", type=click.Path(dir_okay=False), help="Forget data: JSONL with prompt and completion (forget NLL).")
@click.option("--retain", type=click.Path(dir_okay=False), help="Retain data: JSONL with text (retain NLL).")
@click.option("--word", help="The forgotten word: questions about it, and the tokenstein gap.")
@click.option("--tokensteins", "n_tokensteins", type=click.IntRange(min=1), default=16, show_default=True,
              help="How many made-up words to make from --counts (seeded by --tokenstein-seed).")
@click.option("--counts", "counts_path", type=click.Path(dir_okay=False), help="counts.npz (supercal count) to make the tokensteins from.")
@click.option("--corpus", "corpora", multiple=True, type=click.Path(dir_okay=False),
              help="Corpus whose words no tokenstein may be (repeatable; default: the corpora --counts was made from, where they exist). "
                   "The words of --forget and --retain are always excluded.")
@click.option("--tokenstein-seed", type=int, default=0, show_default=True, help="Seed of the tokenstein population.")
@click.option("--tokenstein-file", type=click.Path(dir_okay=False),
              help="Made-up words to use instead: one per line, or a JSON list (a demo's results.json works).")
@click.option("--facts", type=click.Path(dir_okay=False),
              help="Association pairs: JSONL with prompt and answer. Without it association is not measured.")
@click.option("--questions", type=click.Path(dir_okay=False),
              help='Questions: JSONL {"question": "... {word} ..."} (default: generic built-in ones).')
@click.option("--templates", type=click.Path(dir_okay=False),
              help='Gap templates: JSONL {"prefix": ..., "suffix": ...} around the word (default: built-in ones).')
@click.option("--made-up-markers", "markers", multiple=True,
              help="Comma-separated phrases that mark an answer as calling the word made up (replaces the built-in list).")
@click.option("--temps", default=None, help="Answer sampling temperatures, comma-separated (default 0.2,0.7,1.0).")
@click.option("--samples", type=click.IntRange(min=1), default=2, show_default=True, help="Answers per question and temperature.")
@click.option("--answer-tokens", type=click.IntRange(min=1), default=32, show_default=True, help="Longest answer in tokens.")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Longest forget/retain example in tokens.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Examples per forward pass (memory grows with it: batch x tokens x vocabulary logits).")
@swap_values_options
@seed_option
@json_option
def eval_command(model, adapter_path, forget, retain, word, n_tokensteins, counts_path, corpora, tokenstein_seed,
                 tokenstein_file, facts, questions, templates, markers, temps, samples, answer_tokens, max_tokens,
                 batch_size, swap_values, swap_layers, seed, as_json):
    """Measure forgetting and damage: NLLs, association, tokenstein gap ratio, made-up share, degeneration.

    The word is compared with a population of made-up words (tokensteins): made from
    --counts (none of them a word of the corpus or the forget/retain data), or read
    from --tokenstein-file. With --adapter-path the base and the adapted model are
    shown side by side. What cannot be measured from the inputs given is named.

    \b
    Example:
      supercal eval --model demo-out/model --adapter-path demo-out/runs/graddiff/seed-0 \\
        --forget demo-out/forget.jsonl --retain demo-out/retain.jsonl --facts demo-out/facts.jsonl \\
        --word supercalifragilisticexpialidocious --tokenstein-file demo-out/tokensteins.txt
    """
    from ..runs.evaluate import evaluate, table, training_tokensteins
    from ..runs.gap import read_templates
    from ..runs.madeup import ANSWER_TEMPS, parse_markers, read_questions
    from ..runs.probes import parse_temps
    from ..text.tokenstein import population_from_files, read_tokenstein_file

    pair, layers = parse_swap_values(swap_values, swap_layers)
    if tokenstein_file and counts_path:
        raise SupercalError("give --tokenstein-file or --counts (to make tokensteins), not both")
    tokensteins, excluded = [], []
    if (tokenstein_file or counts_path) and not word:
        raise SupercalError("tokensteins are compared with a word: give --word too")
    if tokenstein_file:
        tokensteins = read_tokenstein_file(tokenstein_file)
    elif counts_path:
        # the run's own training tokensteins are left out (evaluate does it): make as many more, so N remain
        trained = {w.lower() for w in training_tokensteins([adapter_path] if adapter_path else [])}
        made, excluded = population_from_files(word, counts_path, n=n_tokensteins + len(trained), seed=tokenstein_seed,
                                               corpora=corpora, data_files=[f for f in (forget, retain) if f],
                                               model_dir=model)
        tokensteins = [t for t in made if t.lower() not in trained][:n_tokensteins]
    result = evaluate(model, adapter_path=adapter_path, forget=forget, retain=retain, word=word,
                      tokensteins=tokensteins, facts=facts, questions=read_questions(questions) if questions else None,
                      templates=read_templates(templates) if templates else None,
                      markers=parse_markers(markers) if markers else None,
                      temps=parse_temps(temps) if temps else ANSWER_TEMPS, samples=samples,
                      answer_tokens=answer_tokens, max_tokens=max_tokens, batch_size=batch_size, seed=seed,
                      swap_values=pair, swap_layers=layers)
    result["excluded_from"] = excluded
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    if result["left_out"]:
        click.echo(f"left out (the run trained on them): {' '.join(result['left_out'])}")
    if result["tokensteins"]:
        click.echo(f"{len(result['tokensteins'])} tokensteins: {' '.join(result['tokensteins'])}\n")
    if pair:
        click.echo(f"values of {pair[1]} at {pair[0]}'s tokens (blocks {swap_layers}); mentions swapped / left "
                   f"(other token count): {result['base']['swap_swapped']} / {result['base']['swap_skipped']}")
    click.echo(table(result))
    for metric, why in result["skipped"].items():
        click.echo(f"not measured: {metric}: {why}")


COMMANDS: list[click.Command] = [eval_command, fuse_command, report_command]
