"""Generation probes: every (prompt, temperature, sample) in one batch, as a table.

Batching is mlx-lm's ``BatchGenerator`` (the engine behind
``mlx_lm.batch_generate``): prompts of different lengths are padded, the KV
cache keeps per-row offsets and masks, finished rows leave the batch, and
``insert(..., samplers=[...])`` takes one sampler per row. What mlx-lm lacks,
and this module adds, is a per-row *random key*: ``make_sampler`` draws from
mlx's global random state, so a row's sample would depend on which other rows
share the batch (and probing during training would disturb the trainer's
random stream). Here every row owns a key derived from (seed, prompt,
temperature, sample): the same seed gives the same table whatever else is in
the batch, and the global random state is left alone.

The tables are written by :mod:`.tables`, degeneration is detected by :mod:`.degeneration`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import SupercalError

DEFAULT_TEMPS = (0.01, 0.07, 0.2, 0.5)


@dataclass
class ProbeRow:
    prompt: str
    temperature: float
    sample: int  # 1-based: sample 1..N at this temperature
    response: str


def generate(model, tokenizer, prompts: list[str], *, temps: Sequence[float] = DEFAULT_TEMPS, samples: int = 1,
             max_tokens: int = 100, seed: int = 0, batch_size: int | None = None,
             progress: Callable[[int, int], None] | None = None, row_keys: bool = True) -> list[ProbeRow]:
    """Sample every prompt at every temperature ``samples`` times, all rows in one batched generation.

    ``model``, ``tokenizer``: as returned by :func:`supercal_mlx.model.load`. Temperature 0 is greedy.
    Rows come out ordered by prompt, then temperature, then sample; responses exclude the prompt and stop
    before an end-of-sequence token or after ``max_tokens`` tokens. ``batch_size`` caps how many rows are
    decoded at once (default: all of them); results do not depend on it. ``progress(done, total)`` is
    called after every decoding step with the number of tokens generated so far.

    ``row_keys=False`` trades the per-row keys for speed (eval samples hundreds of rows): the rows of one
    temperature are decoded together with one sampler and one key chain (from ``seed`` and the
    temperature), so a row's sample then depends on which rows share its batch; the same call still
    gives the same rows.
    """
    temps = [float(t) for t in temps]
    _check(prompts, temps, samples, max_tokens, batch_size)
    combos = [(p, t, s) for p in prompts for t in temps for s in range(1, samples + 1)]
    encoded = {p: _encode(tokenizer, p) for p in prompts}
    if row_keys:
        groups = [(combos, [_row_sampler(t, _row_seed(seed, p, t, s)) for p, t, s in combos])]
    else:
        groups = []
        for temp in temps:
            rows = [c for c in combos if c[1] == temp]
            shared = _row_sampler(temp, _row_seed(seed, "", temp, 0))
            groups.append((rows, [shared] * len(rows)))
    out: dict[tuple, list[int]] = {}
    total = [len(combos) * max_tokens, 0]  # tokens still possible, tokens done

    def step(done_now: int, freed: int) -> None:
        total[1] += done_now
        total[0] -= freed
        if progress is not None:
            progress(total[1], total[0])

    for rows, samplers in groups:
        tokens = _decode(model, tokenizer, [encoded[p] for p, _, _ in rows], samplers, max_tokens=max_tokens,
                         batch_size=batch_size, step=step)
        out.update(zip(rows, tokens))
    return [ProbeRow(p, t, s, tokenizer.decode(out[(p, t, s)])) for p, t, s in combos]


def _decode(model, tokenizer, prompts: list[list[int]], samplers: list, *, max_tokens: int, batch_size: int | None,
            step: Callable[[int, int], None]) -> list[list[int]]:
    """The generated token ids of each prompt (mlx-lm's BatchGenerator, one sampler per row)."""
    from mlx_lm.generate import BatchGenerator, StopSequences

    if getattr(model, "plain_prefill", False):
        return _decode_plain(model, tokenizer, prompts, samplers, max_tokens=max_tokens, step=step)

    n = min(batch_size or len(prompts), len(prompts))
    gen = BatchGenerator(model, max_tokens=max_tokens, completion_batch_size=n, prefill_batch_size=n)
    try:
        stop = StopSequences([[t] for t in tokenizer.eos_token_ids])
        uids = gen.insert(prompts, samplers=samplers, stop_sequences=[stop] * len(prompts))
        out: dict[int, list[int]] = {uid: [] for uid in uids}
        while responses := gen.next_generated():
            freed = 0
            for r in responses:
                if r.finish_reason != "stop":  # the stop token itself is not part of the response
                    out[r.uid].append(r.token)
                if r.finish_reason is not None:  # a row that stops early frees its remaining budget
                    freed += max_tokens - len(out[r.uid]) - (r.finish_reason == "stop")
            step(len(responses), freed)
    finally:
        gen.close()
    return [out[uid] for uid in uids]


def _decode_plain(model, tokenizer, prompts: list[list[int]], samplers: list, *, max_tokens: int,
                  step: Callable[[int, int], None]) -> list[list[int]]:
    """:func:`_decode` for a model that must see each prompt whole in its first call (value swapping,
    :class:`supercal_mlx.train.values.SwappedModel`): BatchGenerator left-pads prompts of different lengths
    and may prefill in chunks, so here the rows of one prompt are decoded together (no padding) with a plain
    KV-cache loop; each row keeps its own sampler."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    eos = set(tokenizer.eos_token_ids)
    out: list[list[int]] = [[] for _ in prompts]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(i)
    for prompt, rows in groups.items():
        cache = make_prompt_cache(model)
        x = mx.array([list(prompt)] * len(rows))  # (R, L)
        live = list(range(len(rows)))
        for _ in range(max_tokens):
            logits = model(x, cache=cache)[:, -1, :].astype(mx.float32)  # (R, V)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            nxt = [int(samplers[rows[j]](logprobs[j:j + 1]).item()) if j in live else 0 for j in range(len(rows))]
            made, freed = len(live), 0
            for j in list(live):
                if nxt[j] in eos:  # the stop token is not part of the response
                    live.remove(j)
                    freed += max_tokens - len(out[rows[j]]) - 1
                else:
                    out[rows[j]].append(nxt[j])
            step(made, freed)
            if not live:
                break
            x = mx.array(nxt)[:, None]  # (R, 1)
    return out


def _check(prompts: list[str], temps: list[float], samples: int, max_tokens: int, batch_size: int | None = None) -> None:
    if isinstance(prompts, str) or not prompts:
        raise SupercalError("give at least one prompt (a list of strings)")
    if not temps or any(not math.isfinite(t) or t < 0 for t in temps):
        raise SupercalError(f"temperatures must be numbers >= 0 (0 = greedy), got {temps}")
    if samples < 1:
        raise SupercalError(f"samples must be at least 1, got {samples}")
    if max_tokens < 1:
        raise SupercalError(f"max_tokens must be at least 1, got {max_tokens}")
    if batch_size is not None and batch_size < 1:
        raise SupercalError(f"batch size must be at least 1, got {batch_size}")


def _encode(tokenizer, prompt: str) -> list[int]:
    from ..text.tokenizer import model_encoder

    ids = model_encoder(tokenizer)(prompt)  # BOS (if the tokenizer adds one) + the prompt, as unlearn and eval
    # An empty prompt starts from end-of-text, as GPT-2-style models begin documents.
    return ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]


def _row_seed(seed: int, prompt: str, temp: float, sample: int) -> int:
    """A 56-bit seed for one row: independent of the other rows in the batch."""
    h = hashlib.blake2b(f"{seed}\0{temp!r}\0{sample}\0{prompt}".encode(), digest_size=7)
    return int.from_bytes(h.digest(), "little")


def _greedy(logprobs):  # (B, V) -> (B,)
    import mlx.core as mx

    return mx.argmax(logprobs, axis=-1)


def _row_sampler(temp: float, row_seed: int):
    """A sampler for one batch row: argmax at temperature 0, else a draw with the row's own key.

    Greedy rows share one function, so an all-greedy batch is one argmax call (BatchGenerator calls a
    shared sampler once on the whole batch, and distinct samplers once per row)."""
    import mlx.core as mx

    if temp == 0:
        return _greedy
    key = [mx.random.key(row_seed)]

    def sample(logprobs):  # (B, V) -> (B,): one row, or a shared sampler's whole batch
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(logprobs.astype(mx.float32) * (1.0 / temp), key=sub)

    return sample


def probe(model_dir: str, *, prompts: list[str], adapter_path: str | None = None, temps: Sequence[float] = DEFAULT_TEMPS,
          samples: int = 1, max_tokens: int = 100, seed: int = 0, swap: tuple[str, str] | None = None,
          batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
          swap_values: tuple[str, str] | None = None, swap_layers="all",
          ) -> tuple[list[ProbeRow], list[ProbeRow] | None]:
    """Load a model folder (with adapters) and probe it: what ``supercal probe`` runs.

    With ``swap=(word, other)`` the prompts with ``word`` replaced are probed in the same batch; returns
    (rows, swapped rows in the same order), else (rows, None). With ``swap_values=(word, other)`` the second
    list is the same prompts, run with the v_proj outputs at ``word``'s tokens replaced by ``other``'s in the
    same context (:class:`supercal_mlx.train.values.SwappedModel`; blocks ``swap_layers``).
    """
    from ..model import load

    if swap_values is not None:
        if swap is not None:
            raise SupercalError("give --swap or --swap-values, not both")
        from ..train.twins import mention_spans

        if not any(mention_spans(p, swap_values[0]) for p in prompts):
            raise SupercalError(f"--swap-values: {swap_values[0]!r} occurs in none of the prompts; swap a word they contain")
        return _probe_swapped_values(model_dir, prompts=prompts, adapter_path=adapter_path, temps=temps,
                                     samples=samples, max_tokens=max_tokens, seed=seed, batch_size=batch_size,
                                     progress=progress, pair=swap_values, layers=swap_layers)

    prompts = list(dict.fromkeys(prompts))
    temps = list(dict.fromkeys(float(t) for t in temps))
    _check(prompts, temps, samples, max_tokens, batch_size)
    swapped = None
    if swap is not None:
        swapped = [swap_word(p, *swap) for p in prompts]
        if swapped == prompts:
            raise SupercalError(f"--swap: {swap[0]!r} occurs in none of the prompts; swap a word that they contain")
    model, tokenizer = load(model_dir, adapter_path, compute_dtype="auto")
    everything = list(dict.fromkeys(prompts + (swapped or [])))
    rows = generate(model, tokenizer, everything, temps=temps, samples=samples, max_tokens=max_tokens, seed=seed,
                    batch_size=batch_size, progress=progress)
    by_key = {(r.prompt, r.temperature, r.sample): r for r in rows}

    def pick(ps: list[str]) -> list[ProbeRow]:
        return [by_key[(p, t, s)] for p in ps for t in temps for s in range(1, samples + 1)]

    return pick(prompts), (pick(swapped) if swapped is not None else None)


def _probe_swapped_values(model_dir, *, prompts, adapter_path, temps, samples, max_tokens, seed, batch_size, progress,
                          pair, layers):
    """(rows, rows with swapped values): the same prompts, the same row seeds."""
    from ..model import load
    from ..train.values import SwappedModel

    model, tokenizer = load(model_dir, adapter_path, compute_dtype="auto")
    opts = dict(temps=temps, samples=samples, max_tokens=max_tokens, seed=seed, batch_size=batch_size, progress=progress)
    plain = generate(model, tokenizer, list(dict.fromkeys(prompts)), **opts)
    swapped_model = SwappedModel(model, tokenizer, *pair, layers=layers, strict=True)
    try:
        swapped = generate(swapped_model, tokenizer, list(dict.fromkeys(prompts)), **opts)
    finally:
        swapped_model.close()
    return plain, swapped


def parse_temps(text: str) -> list[float]:
    """"0.01,0.07,0.2,0.5" -> [0.01, 0.07, 0.2, 0.5]."""
    try:
        temps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        temps = []
    if not temps or any(not math.isfinite(t) or t < 0 for t in temps):
        raise SupercalError(f"--temps wants comma-separated numbers >= 0 (0 = greedy), e.g. 0.01,0.07,0.2,0.5; got {text!r}")
    return temps


def parse_swap(text: str, *, option: str = "--swap") -> tuple[str, str]:
    """"WORD=OTHER" -> ("WORD", "OTHER")."""
    word, eq, other = text.partition("=")
    if not eq or not word.strip() or not other.strip():
        raise SupercalError(f"{option} wants WORD=OTHER, e.g. supercalifragilisticexpialidocious=sqproctarine; got {text!r}")
    return word.strip(), other.strip()


def swap_word(text: str, word: str, other: str) -> str:
    """``text`` with every whole-word, case-insensitive occurrence of ``word`` replaced by ``other``, keeping
    the case: Word -> Other, WORD -> OTHER, word -> other as typed. Inside a longer word it stays (as for
    mentions in ``supercal negatives``)."""
    from ..train.twins import swap_case

    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", lambda m: swap_case(m.group(0), other), text, flags=re.IGNORECASE)
