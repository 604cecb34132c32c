"""Per-layer value swapping: for each block alone, how much does swapping the word's v_proj values with a
made-up word's move the model's answers and the word's associations? (The blog's question 1a: do layers
differ?)

On a model folder (by default a demo output's), for every block l alone, then for all blocks together,
``supercal eval --swap-values WORD=T --swap-layers l`` is measured for several made-up partners T (made
from the counts with another seed than eval's population, and with as many tokens as the word after a
space, so values pair piece by piece), and averaged over the partners:

- made-up share of the word's answers (the tokensteins' own share, unswapped, is the reference);
- association (mean log p(answer | prompt) over the fact pairs);
- the share of the word's mentions in the facts and questions that could be swapped.

    .venv/bin/python scripts/swap_layers.py demo-out [--partners 4] [--adapter-path RUN] [--json-out F]

Prints a markdown table. Run it alone on a shared machine (it samples answers for every layer and partner).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)

WORD = "supercalifragilisticexpialidocious"


def partners(demo: Path, word: str, n: int, seed: int) -> list[str]:
    """``n`` made-up words as long in context as ``word`` (after a space), not in eval's population."""
    from supercal_mlx.model import load
    from supercal_mlx.text.tokenstein import population_from_files

    _, tok = load(demo / "model")
    eval_pop = {w.strip().lower() for w in (demo / "tokensteins.txt").read_text().splitlines() if w.strip()}
    made, _ = population_from_files(word, demo / "counts.npz", n=8 * n, seed=seed, model_dir=demo / "model",
                                    data_files=[demo / "forget.jsonl", demo / "retain.jsonl"])
    same = [t for t in made if t.lower() not in eval_pop
            and len(tok.encode(". " + t)) == len(tok.encode(". " + word))]
    if not same:
        sys.exit(f"no made-up word of {word}'s in-context length among {len(made)}; try another --seed")
    return same[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="a supercal demo output folder (model/, counts.npz, facts.jsonl, ...)")
    ap.add_argument("--word", default=WORD)
    ap.add_argument("--partners", type=int, default=4, help="made-up words to swap in (averaged over)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the partners' population")
    ap.add_argument("--adapter-path", default=None, help="measure a run folder's adapted model instead of the base")
    ap.add_argument("--samples", type=int, default=2, help="answers per question and temperature")
    ap.add_argument("--json-out")
    a = ap.parse_args()

    from supercal_mlx.runs.evaluate import evaluate

    demo = a.demo
    ts = [w.strip() for w in (demo / "tokensteins.txt").read_text().splitlines() if w.strip()]
    kw = dict(word=a.word, facts=str(demo / "facts.jsonl"), samples=a.samples, batch_size=32)
    side = "adapted" if a.adapter_path else "base"
    ref = evaluate(demo / "model", adapter_path=a.adapter_path, tokensteins=ts, **kw)[side]
    pts = partners(demo, a.word, a.partners, a.seed)
    from supercal_mlx.model import load

    n_layers = len(load(demo / "model")[0].layers)
    rows = []
    for layers in [[i] for i in range(n_layers)] + ["all"]:
        per = [evaluate(demo / "model", adapter_path=a.adapter_path, swap_values=(a.word, t), swap_layers=layers,
                        **kw)[side] for t in pts]
        rows.append({"layers": "all" if layers == "all" else str(layers[0]),
                     "made_up_share": [p["made_up_share"] for p in per],
                     "association": [p["association"] for p in per],
                     "swapped": sum(p["swap_swapped"] for p in per),
                     "skipped": sum(p["swap_skipped"] for p in per)})
        print(f"layers {rows[-1]['layers']}: {rows[-1]}", file=sys.stderr)

    def ms(xs):
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"

    print(f"\n{side} model, {len(pts)} partners ({', '.join(pts)}); unswapped: made-up share "
          f"{ref['made_up_share']:.3f} (tokensteins {ref['made_up_share_tokensteins']:.3f}), association "
          f"{ref['association']:.3f}\n")
    print("| blocks swapped | made-up share, word (mean ± sd over partners) | change | association (nats) | change "
          "| mentions swapped / left |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {ms(r['made_up_share'])} | {statistics.mean(r['made_up_share']) - ref['made_up_share']:+.3f} "
              f"| {ms(r['association'])} | {statistics.mean(r['association']) - ref['association']:+.3f} "
              f"| {r['swapped']} / {r['skipped']} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"partners": pts, "reference": {k: ref[k] for k in (
            "made_up_share", "made_up_share_tokensteins", "association")}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
