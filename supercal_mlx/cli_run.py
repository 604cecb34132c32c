"""supercal commands that read a finished run folder: fuse, report (registered through cli_train.COMMANDS)."""

from __future__ import annotations

import click

from .cli_common import force_option, model_dir_option, output_option


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
    from .fuse import fuse

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
    from .report import make_report

    for path in make_report(run_dir, out=out, force=force):
        click.echo(str(path))


COMMANDS: list[click.Command] = [fuse_command, report_command]
