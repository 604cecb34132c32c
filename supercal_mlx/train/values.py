"""Value taps: read, and overwrite, the attention's v_proj outputs at chosen token positions.

The blog's second idea: change only the *values* the word's tokens offer to attention,
so that the model falls back on what it does with another word. Keys and queries, and
the residual stream at the word's own positions, are left alone.

:class:`ValueTap` patches the v_proj layer of chosen blocks (GPT-J's ``attn.v_proj``,
llama-style ``self_attn.v_proj``; found by name) the way
:func:`supercal_mlx.train.lora.enable_grad_checkpoint` patches blocks: each instance gets a
private subclass whose ``__call__`` passes the output through the tap, so parameter names
(and saved adapters) do not change, other models are not affected, and gradients flow
through (the tap is ordinary array code). It works on LoRA-wrapped v_proj too: the tap
sees what the adapted layer computes.

:class:`SwappedModel` is the inference intervention of ``probe`` / ``eval --swap-values``:
a stand-in for the model that, on every input row mentioning WORD, first runs the row
with OTHER in its place to capture OTHER's values, then runs the original row with the
values at WORD's token positions replaced, piece by piece. mlx-lm has no hooks, so this
is written here.
"""

from __future__ import annotations

from typing import Any

from ..errors import SupercalError


def v_proj_modules(model) -> list:
    """The v_proj layer of every block, in block order."""
    found = []
    for i, block in enumerate(model.layers):
        names = [(n, m) for n, m in block.named_modules() if n.split(".")[-1] == "v_proj"]
        if len(names) != 1:
            raise SupercalError(f"block {i} has {len(names)} layers named v_proj; value swapping needs exactly one "
                                "(GPT-J attn.v_proj, llama-style self_attn.v_proj)")
        found.append(names[0][1])
    return found


class ValueTap:
    """Per-layer capture or replacement of v_proj outputs (B, L, D) of the chosen blocks.

    ``mode = "capture"``: ``captured[layer]`` is set to each output; ``mode = "replace"``: outputs become
    ``where(mask, values, output)`` with ``replacements[layer] = (mask (B, L, 1), values (B, L, D))``;
    ``mode = None``: untouched. :meth:`close` restores the layers' classes.
    """

    def __init__(self, model, layers):
        from .lora import resolve_layers

        self.layers = resolve_layers(layers, len(model.layers))
        self.mode: str | None = None
        self.captured: dict[int, Any] = {}
        self.replacements: dict[int, tuple] = {}
        self._patched = []
        modules = v_proj_modules(model)
        for layer in self.layers:
            module = modules[layer]
            base = type(module)

            def call(this, x, _base=base, _layer=layer):
                return self._hook(_layer, _base.__call__(this, x))

            module.__class__ = type(f"Tapped{base.__name__}", (base,), {"__call__": call})
            self._patched.append((module, base))

    def _hook(self, layer: int, y):
        import mlx.core as mx

        if self.mode == "capture":
            self.captured[layer] = y
        elif self.mode == "replace" and layer in self.replacements:
            mask, values = self.replacements[layer]
            y = mx.where(mask, values.astype(y.dtype), y)
        return y

    def close(self) -> None:
        for module, base in self._patched:
            module.__class__ = base
        self._patched = []

    def capture(self, fn, *args, **kw):
        """(fn(*args, **kw), {layer: v_proj output}) with capture on."""
        self.mode, self.captured = "capture", {}
        try:
            out = fn(*args, **kw)
        finally:
            self.mode = None
        captured, self.captured = self.captured, {}
        return out, captured

    def replaced(self, fn, captured: dict, index, mask, *args, **kw):
        """fn(*args, **kw) with each tapped layer's outputs at ``mask`` (B, L) replaced by
        ``captured[layer][b, index[b, p]]`` (``index`` (B, L) int32 positions into the captured rows)."""
        import mlx.core as mx

        m = mask[..., None]  # (B, L, 1)
        self.replacements = {layer: (m, mx.take_along_axis(v, index[..., None], axis=1))  # (B, L, D)
                             for layer, v in captured.items()}
        self.mode = "replace"
        try:
            return fn(*args, **kw)
        finally:
            self.mode, self.replacements = None, {}


def gather_pairs(pairs: list[list[tuple[int, int]]], width: int):
    """(index (B, width) int32, mask (B, width) bool) from per-row (position, source position) pairs."""
    import mlx.core as mx
    import numpy as np

    index = np.zeros((len(pairs), width), dtype=np.int32)
    mask = np.zeros((len(pairs), width), dtype=bool)
    for b, row in enumerate(pairs):
        for p, q in row:
            if p < width:
                index[b, p], mask[b, p] = q, True
    return mx.array(index), mx.array(mask)


def _word_patterns(tokenizer, word: str, other: str) -> list[tuple[list[int], list[int], str]]:
    """(word tokens, other tokens, form) for each in-context form: lower / Capitalized / UPPER, after a space
    or not. Encoded after an anchor and cut at the anchor's length, so a BOS or a prefix space does not enter."""
    from .twins import swap_case

    anchor = list(tokenizer.encode("."))
    out = []
    for form in dict.fromkeys([word.lower(), word[:1].upper() + word[1:].lower(), word.upper()]):
        for sep in (" ", ""):
            w = list(tokenizer.encode("." + sep + form))
            o = list(tokenizer.encode("." + sep + swap_case(form, other)))
            if w[: len(anchor)] == anchor and o[: len(anchor)] == anchor:
                out.append((w[len(anchor):], o[len(anchor):], repr(sep + form)))
    return sorted(out, key=lambda t: -len(t[0]))


class SwappedModel:
    """The model with WORD's values replaced by OTHER's in context (see the module docstring).

    Call it like the model: ``(inputs (B, L), cache=None) -> logits``. Rows that do not mention WORD run
    unchanged. ``strict``: an in-context form of WORD whose counterpart has another token count is an error
    (for probes); else such mentions are left unswapped and counted in ``skipped`` (for eval, where the word
    appears in several letter cases). With a cache, only a first call (offset 0) may contain the word.
    """

    def __init__(self, model, tokenizer, word: str, other: str, *, layers="all", strict: bool = True):
        self.model, self.tokenizer, self.word, self.other, self.strict = model, tokenizer, word, other, strict
        self.patterns = _word_patterns(tokenizer, word, other)
        if not self.patterns:
            raise SupercalError(f"cannot encode {word!r} in context with this tokenizer")
        self.tap = ValueTap(model, layers)
        self.swapped = self.skipped = 0
        self.plain_prefill = True  # probes: decode without left padding (see runs.probes)

    def __getattr__(self, name):  # layers, make_cache, ... of the wrapped model
        return getattr(self.__dict__["model"], name)

    def close(self) -> None:
        self.tap.close()

    def _find(self, row: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """(the row with OTHER in WORD's place, [(position, OTHER's position)]) for one row of tokens."""
        out, pairs, p = [], [], 0
        while p < len(row):
            hit = next((pt for pt in self.patterns if row[p:p + len(pt[0])] == pt[0] and self._boundary(row, p + len(pt[0]))), None)
            if hit is None:
                out.append(row[p])
                p += 1
                continue
            w, o, form = hit
            if len(w) != len(o):
                if self.strict:
                    raise SupercalError(f"in context, {form} is {len(w)} tokens but its counterpart "
                                        f"{self.other!r} is {len(o)}: values can only be swapped piece by piece; "
                                        "pick an OTHER with as many tokens (supercal tokenstein makes one)")
                self.skipped += 1
                out += w
            else:
                pairs += [(p + m, len(out) + m) for m in range(len(w))]
                self.swapped += 1
                out += o
            p += len(w)
        return out, pairs

    def _boundary(self, row: list[int], end: int) -> bool:
        if end >= len(row):
            return True
        nxt = self.tokenizer.decode([row[end]])
        return not (nxt[:1].isalnum() or nxt[:1] == "_")

    def __call__(self, inputs, cache=None, **kw):
        import mlx.core as mx

        rows = inputs.tolist()
        found = [self._find(r) for r in rows]
        if not any(pairs for _, pairs in found):
            return self.model(inputs, cache=cache, **kw)
        if cache is not None and getattr(cache[0], "offset", 0):
            raise SupercalError("value swapping needs the word's whole context in one call (no cache offset)")
        width = max(len(o) for o, _ in found)
        others = mx.array([o + [0] * (width - len(o)) for o, _ in found])
        _, captured = self.tap.capture(self.model, others)
        index, mask = gather_pairs([pairs for _, pairs in found], inputs.shape[1])
        return self.tap.replaced(self.model, captured, index, mask, inputs, cache=cache, **kw)
