"""supercal commands: corpus (count, tokenstein)."""

from __future__ import annotations

import json
import time

import click

from .common import encoding_option, force_option, json_option, model_dir_option, output_option, progress_bar, seed_option

model_tokenizer_option = model_dir_option(
    required=False, help="Count in this model folder's own tokenizer (GPT-2-style byte-level BPE) instead of --encoding.")

COMMANDS: list[click.Command] = []


@click.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path(dir_okay=True))
@output_option(help="Where to write the counts (.npz).")
@encoding_option
@model_tokenizer_option
@click.option("--workers", type=int, default=None, help="Encoding threads (default: all cores).")
@click.option("--merge", is_flag=True, help="Add up counts.npz files (parts of a corpus counted apart) instead of counting text.")
@force_option
@json_option
def count(corpus, out, encoding, model, workers, merge, force, as_json):
    """Count every token of one or more CORPUS files (.txt, .gz, .bz2, .xz, .zip) into counts.npz.

    Exact (the same counts as encoding each file's whole text at once), streamed
    in blocks with bounded memory, on all cores. Special-token text such as
    <|endoftext|> counts as ordinary text; invalid UTF-8 is replaced and reported.
    With --model DIR the tokens are the model's own (its folder is remembered
    in counts.npz for `supercal tokenstein`).

    Example: supercal count enwik9.zip --out counts.npz
    Example: supercal count corpus.txt --model gptj-mlx --out counts.npz

    With --merge, the arguments are counts.npz files of parts of one corpus (counted
    on several machines, for instance); the result equals counting all the parts in
    one process. Files of different encodings or tokenizers are refused.

    Example: supercal count --merge part-a.npz part-b.npz --out counts.npz
    """
    from ..text.counting import count_tokens, load_counts, merge_counts, save_counts
    from ..io import check_output
    from ..errors import SupercalError

    check_output(out, force=force)  # fail before hours of counting, not after
    start = time.perf_counter()
    if merge:
        if encoding or model or workers:
            raise SupercalError("--merge adds up counts files; --encoding, --model and --workers do not apply")
        counts = merge_counts([load_counts(p) for p in corpus], names=list(corpus))
        save_counts(counts, out, force=force)
        summary = {"out": out, "encoding": counts.encoding, "merged": list(corpus), "sources": counts.sources,
                   "bytes": counts.bytes, "tokens": counts.tokens, "distinct_tokens": counts.distinct,
                   "invalid_bytes": counts.invalid_bytes}
        click.echo(json.dumps(summary, ensure_ascii=False) if as_json else
                   f"{counts.tokens:,} tokens ({counts.distinct:,} distinct, {counts.encoding}) from {len(corpus)} "
                   f"counts files ({len(counts.sources)} sources, {counts.bytes:,} bytes); wrote {out}")
        return
    with progress_bar("counting") as progress:
        counts = count_tokens(list(corpus), encoding=encoding, model=model, workers=workers, progress=progress)
    seconds = time.perf_counter() - start
    save_counts(counts, out, force=force)
    summary = {
        "out": out, "encoding": counts.encoding, "sources": counts.sources, "bytes": counts.bytes,
        "tokens": counts.tokens, "distinct_tokens": counts.distinct, "invalid_bytes": counts.invalid_bytes,
        "seconds": round(seconds, 3),
    }
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"{counts.tokens:,} tokens ({counts.distinct:,} distinct, {counts.encoding}) in {counts.bytes:,} bytes "
               f"of text from {len(counts.sources)} file(s), {seconds:.1f} s ({counts.bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    if counts.invalid_bytes:
        click.echo(f"warning: {counts.invalid_bytes:,} bytes were not valid UTF-8 and were replaced with U+FFFD", err=True)
    click.echo(f"wrote {out}")


@click.command()
@click.argument("word")
@click.option("--counts", "counts_path", required=True, type=click.Path(dir_okay=False), help="counts.npz from `supercal count`.")
@click.option("--deviation", type=float, default=0.04, show_default=True, help="Largest relative count difference per token.")
@seed_option
@click.option("--n", "n", type=int, default=1, show_default=True, help="How many different tokensteins.")
@encoding_option
@model_dir_option(required=False, help="The model folder whose tokenizer made the counts (default: the one counts.npz names).")
@json_option
def tokenstein(word, counts_path, deviation, seed, n, encoding, model, as_json):
    """Make a made-up WORD-alike: lowercase tokens with about the same corpus counts as WORD's tokens.

    Each of WORD's tokens gets a different token whose count is within
    --deviation of its own; where none is, the nearest count is taken and
    flagged. The tokenstein re-encodes to exactly its pieces; the same seed
    gives the same word. Works in the tokenizer the counts were made with
    (a tiktoken encoding, or a model folder's tokenizer: `count --model`).

    Example: supercal tokenstein supercalifragilisticexpialidocious --counts counts.npz --n 3
    """
    from ..text.counting import counts_tokenizer, load_counts
    from ..text.tokenizer import resolve
    from ..text.tokenstein import make_tokenstein, markdown_table

    # an unknown encoding or a missing folder: say so before reading the counts
    tok = resolve(encoding=encoding, model=model) if encoding or model else None
    counts = load_counts(counts_path, tokenizer=tok)
    results = make_tokenstein(word, counts, tokenizer=tok or counts_tokenizer(counts), deviation=deviation, seed=seed, n=n)
    if as_json:
        click.echo(json.dumps({"word": word, "encoding": counts.encoding, "deviation": deviation, "seed": seed,
                               "tokensteins": [t.as_dict() for t in results]}, ensure_ascii=False))
        return
    for k, t in enumerate(results):
        if k:
            click.echo()
        click.echo(markdown_table(t))
        click.echo(f"\n{word} -> {t.word}" + ("  (some pieces are outside the deviation)" if t.flagged else ""))


COMMANDS += [count, tokenstein]
