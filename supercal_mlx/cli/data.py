"""supercal commands: data (forget and retain datasets)."""

from __future__ import annotations

import json
from typing import Callable

import click

from .common import encoding_option, force_option, json_option, model_dir_option, output_option, progress_bar, seed_option

COMMANDS: list[click.Command] = []

_model = model_dir_option(required=False, help="Count tokens with this MLX model folder's tokenizer (else --encoding).")
_corpus = click.argument("corpus", type=click.Path(dir_okay=False))


def _dataset(build: Callable, *, out: str, force: bool, encoding: str | None, model: str | None,
             as_json: bool, lazy: bool = False) -> dict | None:
    """What negatives and retain share: check --out first, resolve the tokenizer, run
    ``build(tokenizer, progress) -> (records, summary)`` under a progress bar and write the records.
    Returns the summary to print, or None when it was printed as JSON."""
    from ..io import check_output, write_jsonl
    from ..text import tokenizer as tk

    check_output(out, force=force)
    tok = tk.resolve(encoding=encoding, model=model, lazy=lazy)  # lazy: a tiktoken encoding loads when first used
    with progress_bar("reading") as progress:
        records, summary = build(tok, progress)
        write_jsonl(out, records, force=force)  # records may be an iterator doing the work as it is written
    summary["out"] = out
    if summary.get("invalid_bytes"):  # as count warns
        click.echo(f"warning: {summary['invalid_bytes']:,} bytes were not valid UTF-8 and were replaced with U+FFFD",
                   err=True)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return None
    return summary


def _tokens(stats: dict) -> str:
    return f"min {stats['min']} / median {stats['median']:g} / max {stats['max']}"


@click.command()
@_corpus
@click.option("--keyword", required=True, metavar="WORD", help="The word to forget (matched case-insensitively, whole words).")
@output_option(help="Forget records (JSON lines: prompt, completion).")
@_model
@encoding_option
@click.option("--context-lines", type=int, default=5, show_default=True, help="Lines of context on each side (grep -C).")
@click.option("--window-tokens", type=int, default=800, show_default=True, help="Tokens per window, keyword included.")
@click.option("--stride", type=int, default=None, metavar="TOKENS", help="Slide between windows [default: window/4].")
@click.option("--from-grep", is_flag=True, help="CORPUS is grep -C output: chunks separated by '--' lines.")
@click.option("--unescape-html", is_flag=True, help="Unescape HTML entities twice (enwik9: &amp;mdash; -> —).")
@click.option("--max-windows", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="Stop with an error past this many windows: a word that common makes no forget set (0: no limit).")
@force_option
@json_option
def negatives(corpus, keyword, out, model, encoding, context_lines, window_tokens, stride, from_grep, unescape_html,
              max_windows, force, as_json):
    """Forget data: token windows around every mention of a keyword in CORPUS.

    Chunks are what `grep -i -C N WORD` prints; each whole-word mention gives windows of about
    --window-tokens tokens sliding from "keyword at the end" to "keyword at the start". Records are
    {"prompt": text before the keyword, "completion": the keyword and what follows}; no window edge
    cuts a word, nothing is padded.

    \b
    Example:
      supercal negatives enwik9 --keyword supercalifragilisticexpialidocious \\
          --encoding o200k_base --unescape-html --out forget.jsonl
      grep -i -5 supercalifragilisticexpialidocious enwik9 > hits.txt
      supercal negatives hits.txt --from-grep --keyword supercalifragilisticexpialidocious --out forget.jsonl
    """
    from ..data.negatives import build_forget

    summary = _dataset(
        lambda tok, progress: build_forget(
            corpus, keyword, tok, context_lines=context_lines, window_tokens=window_tokens, stride=stride,
            from_grep=from_grep, unescape_html=unescape_html, progress=progress, max_windows=max_windows,
            stream=True),
        out=out, force=force, encoding=encoding, model=model, as_json=as_json, lazy=True)
    if summary is None:
        return
    forms = ", ".join(f"{form} {n}" for form, n in summary["forms"].items())
    click.echo(f"chunks {summary['chunks']} ({summary['chunks_without_mention']} without a whole-word mention)")
    click.echo(f"mentions {summary['mentions']}: {forms}; near-misses skipped {summary['near_misses']}")
    click.echo(
        f"windows {summary['windows']}, tokens per window {_tokens(summary['tokens'])} "
        f"({summary['tokenizer']}, window {window_tokens}, stride {summary['stride']})"
    )
    if summary["chunks_with_separator"] and not from_grep:
        click.echo(f"note: {summary['chunks_with_separator']} chunks hold a '--' line; if CORPUS is grep output, use --from-grep")
    click.echo(f"wrote {out}")


@click.command()
@_corpus
@click.option("--exclude", multiple=True, required=True, metavar="WORD", help="A word no chunk may contain (repeatable).")
@click.option("--chunks", type=int, required=True, help="How many chunks to sample.")
@click.option("--lines", type=int, default=20, show_default=True, help="Consecutive lines per chunk.")
@click.option("--max-tokens", type=int, default=800, show_default=True, help="Cut each chunk to this many tokens, at a word boundary.")
@seed_option
@output_option(help="Retain records (JSON lines: text).")
@_model
@encoding_option
@click.option("--add-prefixes", type=click.Path(dir_okay=False), metavar="FORGET_JSONL", help="Also add the prompts of these forget records.")
@force_option
@json_option
def retain(corpus, exclude, chunks, lines, max_tokens, seed, out, model, encoding, add_prefixes, force, as_json):
    """Retain data: random chunks of consecutive lines of CORPUS that never contain an excluded word.

    One pass, memory bounded however large the corpus (reservoir sampling); the same seed gives the
    same chunks. Words are excluded case-insensitively, anywhere (also inside longer words).

    \b
    Example:
      supercal retain enwik9 --exclude supercalifragilisticexpialidocious --chunks 2000 \\
          --encoding o200k_base --add-prefixes forget.jsonl --out retain.jsonl
    """
    from ..data.retain import retain_dataset

    summary = _dataset(
        lambda tok, progress: retain_dataset(
            corpus, list(exclude), tok, chunks=chunks, lines=lines, max_tokens=max_tokens, seed=seed,
            add_prefixes=add_prefixes, progress=progress),
        out=out, force=force, encoding=encoding, model=model, as_json=as_json)
    if summary is None:
        return
    click.echo(
        f"blocks of {lines} lines {summary['blocks']}: {summary['blocks_with_word']} with an excluded word, "
        f"{summary['eligible']} eligible; sampled {summary['chunks']} (seed {seed})"
    )
    if add_prefixes:
        click.echo(f"forget prompts added {summary['prefixes_added']} ({summary['prefixes_with_word']} skipped: contain the word)")
    click.echo(f"records {summary['records']}, tokens per record {_tokens(summary['tokens'])} ({summary['tokenizer']})")
    click.echo(f"wrote {out}")


COMMANDS += [negatives, retain]
