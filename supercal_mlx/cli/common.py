"""Options shared by several commands, as decorators (one definition each)."""

from __future__ import annotations

import click

encoding_option = click.option(
    "--encoding", default=None, metavar="NAME",
    help="tiktoken encoding (default o200k_base; cl100k_base also works offline).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
force_option = click.option("--force", is_flag=True, help="Replace an existing output.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")


def model_dir_option(*, required: bool = True, help: str = "MLX model folder (from supercal convert).", name: str = "--model"):
    return click.option(name, "model", required=required, type=click.Path(file_okay=False), help=help)


def output_option(*, help: str, required: bool = True):
    return click.option("--out", "out", required=required, type=click.Path(), help=help)
