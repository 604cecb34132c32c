"""The ``supercal`` command line: a thin click shell over the library.

Commands live in one module per stage of the experiment (``cli/corpus.py``,
``cli/data.py``, ...) and are registered here. No module imports mlx at import time, so
``supercal --help`` stays fast; each command imports what it needs.
"""

from __future__ import annotations

import json
import sys

import click

from .common import encoding_option, json_option, model_dir_option
from ..errors import SupercalError


class SupercalGroup(click.Group):
    """Turns library errors into one-line messages and Ctrl-C into a clean exit 130.

    The one place where operating-system and decoding errors that the library did not turn into a
    :class:`SupercalError` itself become one line naming the file (no traceback).
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SupercalError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            sys.exit(130)
        except OSError as e:
            raise click.ClickException(os_error_message(e)) from None
        except UnicodeDecodeError as e:
            raise click.ClickException(f"a file is not UTF-8 text (byte {e.object[e.start:e.start + 1].hex()} at "
                                       f"offset {e.start}); give a UTF-8 text file") from None


def os_error_message(e: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do."""
    import errno

    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None) or "a file"
    what = e.strerror or type(e).__name__
    hint = {errno.ENOSPC: "free some space or choose another --out", errno.EACCES: "check its permissions",
            errno.EROFS: "choose a writable --out", errno.ENOENT: "check the path",
            errno.EISDIR: "give a file, not a folder", errno.ENOTDIR: "check the path"}.get(e.errno, "")
    return f"{where}: {what}" + (f"; {hint}" if hint else "")


@click.group(cls=SupercalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="supercal-mlx")
def cli():
    """Teach a language model to forget a word, and watch what it does instead.

    \b
    Start with:  supercal demo          (offline, a few minutes)
    Then:        supercal tokens supercalifragilisticexpialidocious
    """


@cli.command()
def info():
    """Versions, the MLX device, the compute path bfloat16 / quantized bases take there, and which BLAS mlx uses.

    Example: supercal info
    """
    from importlib.metadata import PackageNotFoundError, version

    from .. import _blas, device

    for pkg in ("supercal-mlx", "mlx", "mlx-lm", "tiktoken", "numpy", "huggingface-hub", "click"):
        try:
            v = version(pkg)
        except PackageNotFoundError:
            v = "not installed"
        click.echo(f"{pkg:16} {v}")
    click.echo(f"{'device':16} {device.describe()}")
    click.echo(f"{'blas':16} {_blas.describe()}")


@cli.command()
@click.argument("word")
@encoding_option
@model_dir_option(required=False, help="Use this model folder's own tokenizer instead of a tiktoken encoding.")
@click.option("--counts", "counts_path", type=click.Path(dir_okay=False), help="counts.npz from `supercal count`: show each piece's corpus count.")
@json_option
def tokens(word, encoding, model, counts_path, as_json):
    """Show the pieces (and ids) a WORD is split into.

    Example: supercal tokens supercalifragilisticexpialidocious
    """
    from ..text import tokenizer as tk

    tok = tk.resolve(encoding=encoding, model=model)
    pieces = tk.token_splits(word, tok)
    counts = None
    if counts_path:
        from ..text.counting import load_counts

        counts = load_counts(counts_path, tokenizer=tok).counts
    rows = [{"id": i, "piece": p} | ({"count": int(counts[i])} if counts is not None else {}) for i, p in pieces]
    if as_json:
        click.echo(json.dumps({"word": word, "tokenizer": tok.name, "tokens": rows}, ensure_ascii=False))
        return
    click.echo("|".join(p for _, p in pieces))
    click.echo(f"{len(pieces)} tokens ({tok.name})")
    for r in rows:
        extra = f"  {r['count']:>12,}" if "count" in r else ""
        click.echo(f"{r['id']:>8}  {r['piece']!r}{extra}")


def _register() -> None:
    """Every stage module lists its commands in ``COMMANDS``; all are added here, the same way."""
    from . import clean, corpus, data, demo, model, probe, runs, train

    for mod in (corpus, data, model, probe, train, runs, demo, clean):
        for command in mod.COMMANDS:
            cli.add_command(command)


_register()
