#!/usr/bin/env python
"""Write a realistic English-like corpus of a given size (for benchmarks and tests).

The text imitates the enwik9 Wikipedia dump: Zipf-distributed words (common
English words plus made-up ones), sentences and paragraphs, wiki markup
([[links]], '''bold''', {{templates}}, == headings ==, lists, tables, refs),
XML-escaped HTML (&lt;ref&gt;, &amp;, &quot;, &nbsp;), numbers and dates,
non-ASCII names (Zürich, Kraków, Москва, Ελλάδα, 東京, rarely a non-BMP
letter), and now and then the text "<|endoftext|>" between articles.

    python scripts/make_corpus.py --size 200MB --out /tmp/corpus200.txt
    python scripts/make_corpus.py --size 5MB --out /tmp/corpus.txt.gz    # .gz/.bz2/.xz/.zip compress

Importable: ``generate(size, seed=)`` yields text pieces whose UTF-8 length adds
up to exactly ``size`` bytes; ``write_corpus(path, size, seed=)`` writes them.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

COMMON = (
    "the of and in to a is was for as on by with that from at his it an are were which be this also or "
    "has had first one new their after its who but they not been two have her time city year other all "
    "she most school he there more into state film united can world during when may three between later "
    "over where under only used known some team would years many national such first such part these "
    "river music war album early born since then while against area series about university season "
    "county village population family north south west east government church century people number"
).split()
NAMES = (
    "Zürich Kraków São_Paulo Málaga Besançon Düsseldorf Göteborg Øresund Reykjavík Łódź Plzeň Brașov "
    "Москва Санкт-Петербург Ελλάδα Αθήνα 東京 北京 서울 القاهرة ירושלים मुंबई Ñuñoa Curaçao Āhua Nguyễn "
    "François Müller José Dvořák Gödel Erdős Štefan Ibáñez Bjørn Æthelred"
).split()
RARE = ("𐌰𐌱𐌲", "😀", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "🇩🇪")  # non-BMP: one of these makes a Python str 4 bytes per character
SYLLABLES = "ka lo ri ta me sin tor ven ul ex ra po di an ber gu fi ne str tion al ic ous ism ly ment ing er".split()
ENTITIES = ("&amp;", "&quot;", "&nbsp;", "&lt;br /&gt;", "&mdash;", "&ndash;", "&#39;", "&eacute;")
TEMPLATES = ("cite web", "cite book", "Infobox settlement", "citation needed", "reflist", "main", "convert", "lang")


def _vocabulary(rng: np.random.Generator, size: int = 20000) -> list[str]:
    made_up = set()
    while len(made_up) < size:
        n = int(rng.integers(1, 5))
        made_up.add("".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n)))
    return COMMON + [n.replace("_", " ") for n in NAMES] + sorted(made_up)


def _decorated(words: list[str]) -> tuple[list[str], np.ndarray]:
    """Every word in every decoration, with the probability of each (word Zipf x decoration)."""
    decorations = (
        ("{} ", 0.62), ("{}, ", 0.08), ("{}. ", 0.06), ("[[{}]] ", 0.06), ("{}'s ", 0.02), ("'''{}''' ", 0.01),
        ("{} (", 0.01), ("{}) ", 0.01), ("[[{0}|{0}s]] ", 0.01), ("{}; ", 0.01), ("{}&nbsp;", 0.01),
        ("&quot;{}&quot; ", 0.01), ("{}-", 0.01), ("{}: ", 0.01),
    )
    deco_p = np.array([p for _, p in decorations])
    deco_p /= deco_p.sum()
    zipf = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    zipf /= zipf.sum()
    forms = []
    for w in words:
        cap = w[:1].upper() + w[1:]
        for i, (fmt, _) in enumerate(decorations):
            forms.append(fmt.format(cap if fmt.startswith("[[") and i % 2 else w))
    return forms, np.outer(zipf, deco_p).ravel()


def _article(rng: np.random.Generator, forms: list[str], cum: np.ndarray, words: list[str], n_words: int) -> str:
    pick = np.searchsorted(cum, rng.random(n_words))  # (n_words,) indices into forms
    body = [forms[i] for i in pick]
    title = " ".join(words[i] for i in rng.integers(0, len(words), 2)).title()
    year = int(rng.integers(1200, 2025))
    parts = [
        f"  <page>\n    <title>{title}</title>\n    <id>{int(rng.integers(1, 10**7))}</id>\n    <text xml:space=\"preserve\">",
        f"{{{{{TEMPLATES[int(rng.integers(2, len(TEMPLATES)))]}\n| name = {title}\n| population = {int(rng.integers(1000, 10**7)):,}\n"
        f"| founded = {year}\n}}}}\n'''{title}''' is a ",
    ]
    step = 40 + int(rng.integers(0, 80))
    for k in range(0, n_words, step):
        chunk = "".join(body[k : k + step])
        r = rng.random()
        if r < 0.15:
            chunk += f"&lt;ref&gt;{{{{cite web |url=http://www.example.org/{words[k % len(words)]}/{year} |title={title}}}}}&lt;/ref&gt;"
        elif r < 0.25:
            chunk += f" {NAMES[int(rng.integers(0, len(NAMES)))].replace('_', ' ')} {ENTITIES[int(rng.integers(0, len(ENTITIES)))]} "
        elif r < 0.3:
            chunk += f"\n\n== {words[int(rng.integers(0, 300))].title()} ==\n"
        elif r < 0.35:
            chunk += f"\n* [[{words[int(rng.integers(0, len(words)))]}]] ({year}&ndash;{year + int(rng.integers(1, 40))})\n"
        elif r < 0.37:
            chunk += f"\n{{| class=&quot;wikitable&quot;\n|-\n! {title} !! {year}\n|-\n| {int(rng.integers(0, 10**6))} || 3.14159\n|}}\n"
        elif r < 0.3705:
            chunk += RARE[int(rng.integers(0, len(RARE)))]
        parts.append(chunk.rstrip(" ") + ".\n\n" if rng.random() < 0.5 else chunk)
    parts.append(f"\n[[Category:{title}]]</text>\n  </page>\n")
    if rng.random() < 0.02:
        parts.append("<|endoftext|>")
    return "".join(parts)


def generate(size: int, *, seed: int = 0) -> Iterator[str]:
    """Text pieces (one article each) whose UTF-8 encodings add up to exactly ``size`` bytes."""
    rng = np.random.default_rng(seed)
    words = _vocabulary(rng)
    forms, p = _decorated(words)
    cum = np.cumsum(p)
    cum[-1] = 1.0
    left = size
    while left > 0:
        text = _article(rng, forms, cum, words, int(rng.integers(200, 3000)))
        data = text.encode("utf-8")
        if len(data) > left:
            # cut at a character boundary, then pad with spaces to the exact size
            text = data[:left].decode("utf-8", errors="ignore")
            text += " " * (left - len(text.encode("utf-8")))
            data = text.encode("utf-8")
        left -= len(data)
        yield text


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: give bytes or e.g. 500KB, 200MB, 1GB")
    unit = (m.group(2) or "b").rstrip("b")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def write_corpus(path: str | os.PathLike, size: int, *, seed: int = 0) -> Path:
    """Write ``size`` bytes of text to ``path``; .gz, .bz2, .xz or .zip compress it (written atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(path.stem, "w") as f:
            for text in generate(size, seed=seed):
                f.write(text.encode("utf-8"))
    else:
        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
        with opener(tmp, "wb") as f:
            for text in generate(size, seed=seed):
                f.write(text.encode("utf-8"))
    os.replace(tmp, path)
    return path


def cached_corpus(workdir: str | os.PathLike, mb: int, *, seed: int = 0) -> Path:
    """``workdir/corpus-{mb}MB.txt`` (mb * 10^6 bytes), written only if missing or of the wrong size (benchmarks)."""
    path = Path(workdir) / f"corpus-{mb}MB.txt"
    if not path.exists() or path.stat().st_size != mb * 10**6:
        print(f"writing {path}", file=sys.stderr)
        write_corpus(path, mb * 10**6, seed=seed)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, required=True, help="uncompressed size, e.g. 200MB (10^6 bytes) or 64MiB")
    ap.add_argument("--out", required=True, help="output file; .gz/.bz2/.xz/.zip compress")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace an existing file")
    args = ap.parse_args(argv)
    if Path(args.out).exists() and not args.force:
        sys.exit(f"error: {args.out} exists; pass --force to replace it")
    path = write_corpus(args.out, args.size, seed=args.seed)
    print(f"wrote {path} ({args.size:,} bytes of text)", file=sys.stderr)


if __name__ == "__main__":
    main()
