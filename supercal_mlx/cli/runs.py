"""supercal commands that read a model or a finished run folder: eval, fuse, report."""

from __future__ import annotations

import json

import click

from .common import force_option, json_option, model_dir_option, output_option


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

    Needs matplotlib: pip install 'supercal-mlx[plot]'.

    Example: supercal report runs/ga && open runs/ga/report/summary.md
    """
    from ..runs.report import make_report

    for path in make_report(run_dir, out=out, force=force):
        click.echo(str(path))


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
    from ..runs.evaluate import evaluate, table

    result = evaluate(model, adapter_path=adapter_path, forget=forget, retain=retain, word=word, tokenstein=other,
                      facts=facts, max_tokens=max_tokens, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo(table(result))


COMMANDS: list[click.Command] = [eval_command, fuse_command, report_command]
