"""Options shared by several commands, as decorators (one definition each), and the progress bar."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import click

encoding_option = click.option(
    "--encoding", default=None, metavar="NAME",
    help="tiktoken encoding (default o200k_base; cl100k_base also works offline).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
force_option = click.option("--force", is_flag=True, help="Replace an existing output.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")


def swap_values_options(fn):
    """--swap-values WORD=OTHER and --swap-layers (probe, eval): the value-swapping intervention."""
    fn = click.option("--swap-layers", default="all", show_default=True, metavar="all|last:N|0,3,5",
                      help="Blocks whose values --swap-values replaces.")(fn)
    return click.option("--swap-values", default=None, metavar="WORD=OTHER",
                        help="Run the model with the v_proj outputs at WORD's tokens replaced by those computed for "
                             "OTHER in the same context, piece by piece (OTHER needs as many tokens there, as a "
                             "tokenstein has).")(fn)


def parse_swap_values(swap_values: str | None, swap_layers: str):
    """(("WORD", "OTHER") or None, the layer spec) from the two options."""
    from ..runs.probes import parse_swap
    from ..train.config import parse_layers

    pair = parse_swap(swap_values, option="--swap-values") if swap_values is not None else None
    return pair, parse_layers(swap_layers, "--swap-layers")


def model_dir_option(*, required: bool = True, help: str = "MLX model folder (from supercal convert).", name: str = "--model"):
    return click.option(name, "model", required=required, type=click.Path(file_okay=False), help=help)


def output_option(*, help: str, required: bool = True):
    return click.option("--out", "out", required=required, type=click.Path(), help=help)


@contextlib.contextmanager
def progress_bar(desc: str, *, unit: str = "B") -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr (hidden when stderr is not a terminal) behind the library's callback
    ``progress(done, total)``; ``unit="B"`` shows bytes with k/M/G prefixes."""
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):  # tqdm's disable=None hides it there too
        yield lambda done, total: None
        return
    from tqdm import tqdm  # imported only for a bar that shows (26 ms)

    bar = tqdm(total=0, unit=unit, unit_scale=unit == "B", desc=desc, file=sys.stderr, disable=None, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()
