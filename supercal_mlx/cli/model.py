"""supercal commands: model."""

from __future__ import annotations

import click

from .common import force_option, output_option, progress_bar

COMMANDS: list[click.Command] = []


@click.command()
@click.argument("source")
@output_option(help="Output MLX model folder (written under a temporary name, renamed when complete).")
@click.option("--revision", default=None, help="Hub branch, tag or commit (hub ids only), e.g. float16.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16", show_default=True,
              help="Output dtype (float32 to train on a Linux CPU).")
@click.option("--quantize", is_flag=True, help="Quantize the linear and embedding weights (mlx-lm layout).")
@click.option("--q-bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="Bits per quantized weight.")
@click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Weights sharing one scale and bias.")
@force_option
def convert(source, out, revision, dtype, quantize, q_bits, q_group_size, force):
    """Convert a Hugging Face checkpoint (folder or hub id) into an MLX model folder.

    Any architecture mlx-lm knows (GPT-J, Llama, Mistral, Qwen2, Phi-3, GPT-2,
    GPT-NeoX, ...): names come from mlx-lm's own model class and sanitize.
    SOURCE holds config.json, the tokenizer and safetensors or PyTorch .bin
    weights (single or sharded). A .bin is read without torch and without
    running any code in it.

    \b
    Example: supercal convert EleutherAI/gpt-j-6b --revision float16 --out gpt-j-6b-mlx
    """
    from pathlib import Path

    from ..convert import convert as run_convert

    with progress_bar("convert") as progress:
        path = run_convert(source, out, revision=revision, dtype=dtype, quantize=quantize, q_bits=int(q_bits),
                           q_group_size=int(q_group_size), force=force, progress=progress)
    size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    what = f"{q_bits}-bit (group {q_group_size}), {dtype} scales" if quantize else dtype
    shown = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    click.echo(f"Wrote {path} ({shown}, {what}); try: supercal probe --model {path} --prompt 'Hello'")


COMMANDS.append(convert)
