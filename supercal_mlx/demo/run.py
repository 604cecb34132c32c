"""The embedded demonstration: a small model that knows the word, forgets it, and shows what it does instead.

``supercal demo`` runs the whole experiment offline in a few minutes, through
the same library functions as the commands (tokens, count, tokenstein,
negatives, retain, probe, unlearn, eval, report), on a small GPT-J pretrained
here on a synthetic corpus (:mod:`supercal_mlx.demo.synthetic`,
:mod:`supercal_mlx.demo.pretrain`; cached, so a second run skips pretraining).

Everything goes under one output folder::

    DIR/corpus.txt          the synthetic corpus          DIR/model/        the pretrained model
    DIR/counts.npz          token counts (model's own)    DIR/tokenstein.json
    DIR/forget.jsonl        forget data                   DIR/retain.jsonl  retain data
    DIR/run/                the unlearning run (adapters, metrics, probes, report/)
    DIR/run-ga/             with --compare: plain gradient ascent, same start
    DIR/eval.json           every number of the final table (supercal eval's JSON, one per run)
    DIR/results.md          the final table and the probe tables

The folder is built beside ``DIR`` under a temporary name and moved to ``DIR``
only when the demo finishes (:func:`supercal_mlx.outputs.new_output_dir`); the
paths the run folders and tables recorded are then rewritten from the temporary
name to ``DIR``. On an error, Ctrl-C or kill -9 an existing ``DIR`` (with
``--force``) is untouched; the next run to ``DIR`` removes the leftover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import synthetic
from ..outputs import check_output_dir, new_output_dir

WORD = synthetic.KEYWORD


@dataclass(frozen=True)
class DemoSettings:
    """Data and unlearning settings of the demo (the model recipe is a :class:`pretrain.DemoModelSpec`)."""

    # Short windows (the uppercase keyword alone is 34 tokens): the completions stay near the keyword,
    # so gradient ascent pushes on the word and its sentence rather than on unrelated lines after it.
    window_tokens: int = 48
    stride: int = 48
    context_lines: int = 2
    retain_chunks: int = 200
    retain_lines: int = 4
    # Measured on the default model: 35 steps at 3e-4 with the retain NLL weighted 2x lift the forget NLL
    # by ~2 nats/token with the retain NLL ~4% up; weight 1x: ~8% up; 60 steps overshoot into degenerate text.
    unlearn: dict = field(default_factory=lambda: dict(
        loss="graddiff", retain_weight=2.0, project="per-layer", project_k=4, project_every=5,
        lora_rank=8, lora_alpha=16.0, lora_keys=["attn.q_proj", "attn.v_proj", "attn.out_proj", "mlp.fc_in", "mlp.fc_out"],
        lr=3e-4, steps=35, batch_size=8, warmup_steps=0, checkpoint_every=10, probe_every=10,
    ))
    # Plain gradient ascent for --compare: the same everything, minus retain data and projection.
    plain: dict = field(default_factory=lambda: dict(loss="ga", project="off"))
    probe_temps: tuple = (0.01, 0.5)
    probe_max_tokens: int = 24


DEFAULT_SETTINGS = DemoSettings()
FAST_SETTINGS = dataclasses.replace(
    DEFAULT_SETTINGS, retain_chunks=60,
    unlearn=dict(DEFAULT_SETTINGS.unlearn, steps=10, lr=2e-3, lora_rank=4, lora_alpha=8.0, checkpoint_every=10),
    probe_temps=(0.01,), probe_max_tokens=12,
)


def _relocate(tmp: Path, out: Path, result: dict) -> dict:
    """Rewrite the paths recorded under the temporary name ``tmp`` (config.yaml, eval.json, results.md,
    report summaries) to ``out``; return ``result`` with its paths rewritten too."""
    from ..text.counting import load_counts, save_counts

    pairs = [(str(tmp.resolve()), str(out.resolve())), (str(tmp), str(out))]

    def fix(text: str) -> str:
        for a, b in pairs:
            text = text.replace(a, b)
        return text

    for p in sorted(tmp.rglob("*")):
        if p.suffix in (".yaml", ".md", ".json") and p.is_file() and (tmp / "model") not in p.parents:
            text = p.read_text(encoding="utf-8")
            if fix(text) != text:
                p.write_text(fix(text), encoding="utf-8")
    for p in sorted(tmp.glob("*.npz")):  # counts.npz names the model folder whose tokenizer counted
        counts = load_counts(p)
        if fix(counts.model) != counts.model:
            save_counts(dataclasses.replace(counts, model=fix(counts.model)), p, force=True)
    return json.loads(fix(json.dumps(result, ensure_ascii=False)))


def run_demo(out: str | os.PathLike = "demo-out", *, fast: bool = False, compare: bool = False, force: bool = False,
             cache: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
             on_pretrain: Callable[[dict], None] | None = None) -> dict:
    """Run the demo into ``out``; return {"out", "eval": {name: evaluate() result}, "tables": {...}, "seconds": {...}}.

    ``log`` receives one line per stage; ``on_pretrain`` each pretraining step record.
    """
    from . import pretrain

    say = log or (lambda msg: None)
    spec = pretrain.FAST_SPEC if fast else pretrain.DEFAULT_SPEC
    settings = FAST_SETTINGS if fast else DEFAULT_SETTINGS
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    out = Path(out)
    check_output_dir(out, kind="demo", force=force)  # before pretraining, not after it

    folder, built = pretrain.demo_model(spec, root=cache, progress=on_pretrain, notice=say)
    seconds["pretrain" if built else "load cached model"] = time.perf_counter() - t0
    say(("pretrained" if built else "using the cached") + f" demo model in {folder}")
    with new_output_dir(out, kind="demo", force=force) as tmp:
        result = _experiment(folder, tmp, settings, compare=compare, say=say, seconds=seconds)
        seconds["total"] = time.perf_counter() - t0
        result["seconds"] = seconds
        (tmp / "timings.json").write_text(json.dumps(seconds, indent=2))
        result = _relocate(tmp, out, result)
    return result


@contextlib.contextmanager
def _timed(seconds: dict, name: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - t


def _experiment(folder: Path, out: Path, st: DemoSettings, *, compare: bool, say, seconds: dict) -> dict:
    from ..train.config import load_config
    from ..text.counting import count_tokens, save_counts
    from ..runs.evaluate import evaluate_runs, format_table
    from ..io import read_jsonl, write_jsonl
    from ..data.negatives import build_forget
    from ..runs.probes import ProbeRow
    from ..runs.tables import markdown_table
    from ..runs.report import NO_PLOTS, make_report, plots_available
    from ..data.retain import retain_dataset
    from ..text.tokenizer import from_model, token_splits
    from ..text.tokenstein import make_tokenstein, population, words_in_files
    from ..train.trainer import unlearn

    with _timed(seconds, "data"):
        shutil.copy(folder / "corpus.txt", out / "corpus.txt")
        shutil.copytree(folder / "model", out / "model")
        model_dir, corpus = out / "model", out / "corpus.txt"
        tok = from_model(model_dir)
        pieces = [p for _, p in token_splits(WORD, tok)]
        say(f"tokens: the demo model splits {WORD} into {len(pieces)} pieces: {'|'.join(pieces)}")
        # counted in the model's own tokens, so the tokenstein's pieces are as common as the word's pieces
        # are in what the model saw (not in some other tokenizer's split of the same text)
        counts = count_tokens([str(corpus)], model=model_dir)
        save_counts(counts, out / "counts.npz")
        ts = make_tokenstein(WORD, counts, tokenizer=tok, seed=0)[0]
        other = ts.word
        (out / "tokenstein.json").write_text(json.dumps(ts.as_dict(), indent=2, ensure_ascii=False))
        say(f"count + tokenstein: {counts.tokens:,} tokens ({counts.encoding}); tokenstein {other}")
        forget, summary = build_forget(corpus, WORD, tok, context_lines=st.context_lines,
                                       window_tokens=st.window_tokens, stride=st.stride)
        write_jsonl(out / "forget.jsonl", forget)
        retain, _ = retain_dataset(corpus, [WORD], tok, chunks=st.retain_chunks, lines=st.retain_lines,
                                   max_tokens=st.window_tokens)
        write_jsonl(out / "retain.jsonl", retain)
        say(f"negatives + retain: {len(forget)} forget windows ({summary['mentions']} mentions), "
            f"{len(retain)} retain chunks")
        # the made-up words eval compares the word with: none occurs in the corpus or the forget data
        tokensteins = population(WORD, counts, n=16, seed=0, tokenizer=tok,
                                 exclude=words_in_files([corpus, out / "forget.jsonl"]))
        (out / "tokensteins.txt").write_text("\n".join(tokensteins) + "\n")
        write_jsonl(out / "facts.jsonl", synthetic.facts(WORD))

    # Probed by the trainer before the first step and after the last (run/probes.jsonl).
    prompts = synthetic.probe_prompts(WORD) + synthetic.probe_prompts(other)[:1]
    runs = {"run": st.unlearn}
    if compare:
        runs["run-ga"] = dict(st.unlearn, **st.plain)
    summaries = {}
    for name, overrides in runs.items():
        plain = name == "run-ga"
        with _timed(seconds, f"unlearn {name}"):
            cfg = load_config(model=str(model_dir), forget=str(out / "forget.jsonl"),
                              retain=None if plain else str(out / "retain.jsonl"), out=str(out / name),
                              max_tokens=st.window_tokens, probe_prompts=prompts, probe_temps=list(st.probe_temps),
                              probe_max_tokens=st.probe_max_tokens, **overrides)
            summaries[name] = unlearn(cfg)
        if summaries[name]["stopped"] == "interrupted":  # the trainer saved a checkpoint; the demo starts over
            raise KeyboardInterrupt
        say(f"unlearn {name}: {summaries[name]['steps']} steps ({cfg.loss}, projection {cfg.project}, "
            f"{'no retain data' if plain else 'retain-anchored'}), stopped: {summaries[name]['stopped']}")
        with _timed(seconds, f"report {name}"):
            make_report(out / name)
    if not plots_available():
        say(f"report: {NO_PLOTS}")

    probes = read_jsonl(out / "run" / "probes.jsonl", required=("step", "prompt", "temperature", "sample", "response"))
    last = max(r["step"] for r in probes)
    before, after = ([ProbeRow(r["prompt"], r["temperature"], r["sample"], r["response"]) for r in probes
                      if r["step"] == step] for step in (0, last))
    with _timed(seconds, "eval"):
        res = evaluate_runs(model_dir, [out / name for name in runs], forget=str(out / "forget.jsonl"),
                            retain=str(out / "retain.jsonl"), word=WORD, tokensteins=tokensteins,
                            facts=str(out / "facts.jsonl"), max_tokens=st.window_tokens, batch_size=32)
    results = {name: dict(res, adapter_path=str(out / name), adapted=res["adapted"][str(out / name)]) for name in runs}
    (out / "eval.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    columns = [("before", results["run"]["base"]), ("after", results["run"]["adapted"])]
    if compare:
        columns.append(("plain GA", results["run-ga"]["adapted"]))
    final = format_table(columns)
    probes_md = markdown_table(before, other=after, labels=("before", "after"))
    pairs = _association_table(results["run"]["facts"], columns)
    rederive = "\n".join(f"supercal eval --model {model_dir} --adapter-path {out / name} --forget {out / 'forget.jsonl'} "
                         f"--retain {out / 'retain.jsonl'} --facts {out / 'facts.jsonl'} --word {WORD} "
                         f"--tokenstein-file {out / 'tokensteins.txt'} --max-tokens "
                         f"{st.window_tokens} --batch-size 32" for name in runs)
    (out / "results.md").write_text(
        f"# supercal demo\n\nword: {WORD}, tokenstein: {other}\n\n```\n{final}\n```\n\n"
        f"Association per pair, log p(answer | prompt) in nats:\n\n{pairs}\n\n"
        f"Re-derive these numbers:\n\n```\n{rederive}\n```\n\n"
        f"## Probes before and after unlearning\n\n{probes_md}\n", encoding="utf-8")
    return {"out": str(out), "word": WORD, "tokenstein": other, "eval": results, "runs": summaries,
            "tables": {"final": final, "probes": probes_md, "rederive": rederive}}


def _association_table(facts: list[dict], columns: list[tuple[str, dict]]) -> str:
    """Markdown: one row per fact pair, one column per measurement."""
    lines = ["| prompt | answer | " + " | ".join(name for name, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for i, f in enumerate(facts):
        cells = " | ".join(f"{m['association_pairs'][i]:.2f}" for _, m in columns)
        lines.append(f"| {f['prompt']} | {f['answer'].strip()} | {cells} |")
    return "\n".join(lines)
