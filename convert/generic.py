"""Any architecture mlx-lm knows -> MLX folder, tensor by tensor, with mlx-lm's own model class and ``sanitize``.

mlx-lm's loader reads every weight, then calls the model's ``sanitize`` on the
whole dict (renaming, dropping buffers such as ``rotary_emb.inv_freq``, dropping
a tied ``lm_head``, transposing GPT-2's Conv1D weights). To keep memory bounded
we run that same ``sanitize`` once on stand-ins (:class:`_Ref`) that know only
their source tensor, shape and dtype and record the transposes and reshapes
applied to them; the renamed stand-ins say where each source tensor goes and
what to do with it. Each tensor is then read, transformed, cast (quantized) and
written on its own by :func:`.gptj.write_weights`, so peak memory is about one
tensor (row chunks when nothing transforms it), never the model.

A ``sanitize`` that combines tensors (stacking MoE experts, splitting fused
projections with ``mx.split``...) cannot run on stand-ins; such architectures
are refused with a pointer to ``mlx_lm.convert`` rather than converted in full
memory. The expected names and shapes come from building mlx-lm's model from
the config (lazily: no memory), so missing, extra or misshapen tensors are
refused by name, as for GPT-J.
"""

from __future__ import annotations

import re

from ..errors import SupercalError
from .gptj import Job, check_quantized, make_job
from .readers import TensorInfo


class _Unsupported(AttributeError):
    """An operation on a stand-in that needs the tensor's data (hasattr() sees a missing attribute)."""


class _Ref:
    """A source tensor as ``sanitize`` sees it: shape, dtype and the shape operations applied so far."""

    def __init__(self, info: TensorInfo, shape: tuple[int, ...] | None = None, ops: tuple = ()):
        self.info, self.shape, self.ops = info, tuple(info.shape if shape is None else shape), ops

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def dtype(self):
        import mlx.core as mx

        return getattr(mx, self.info.dtype)

    def transpose(self, *axes):
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = axes or tuple(reversed(range(self.ndim)))
        return _Ref(self.info, tuple(self.shape[a] for a in axes), self.ops + (("transpose", axes),))

    @property
    def T(self):  # noqa: N802 (mx.array's name)
        return self.transpose()

    def swapaxes(self, a: int, b: int):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(*axes)

    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if -1 in shape:
            known = 1
            for d in shape:
                known *= d if d != -1 else 1
            shape = tuple(self.size // known if d == -1 else d for d in shape)
        return _Ref(self.info, shape, self.ops + (("reshape", shape),))

    def astype(self, dtype):  # the output dtype is chosen by convert
        return self

    def __getattr__(self, name):
        raise _Unsupported(name)

    def __getitem__(self, key):
        raise _Unsupported("slicing")

    def __array__(self, *a, **k):
        raise _Unsupported("array data")


# Buffers, not weights, that some transformers versions saved (rotary tables, causal masks); dropped when the model
# has no such parameter, as the sanitize of the architectures that know about them does.
_BUFFER = re.compile(r"(rotary_emb\.inv_freq|\.attn\.(bias|masked_bias)|\.attention\.(bias|masked_bias))$")


def apply_ops(x, ops: tuple):
    """Replay the recorded shape operations on the real array ``x`` (an mx.array)."""
    for op, arg in ops:
        x = x.transpose(arg) if op == "transpose" else x.reshape(arg)
    return x


def mlx_config(config: dict) -> dict:
    """``config`` with the keys mlx-lm's model classes read: transformers 5 writes the rotary settings as
    ``rope_parameters`` ({"rope_theta", "rope_type", ...}), mlx-lm 0.32's Llama, Qwen2, Phi-3 ... read
    ``rope_theta`` and ``rope_scaling``; without this a non-default theta would be silently ignored."""
    cfg = dict(config)
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope and "rope_theta" not in cfg:
            cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and not cfg.get("rope_scaling"):
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return cfg


def build_model(config: dict):
    """mlx-lm's model for ``config`` (parameters are lazy: nothing is allocated) and its model type."""
    from mlx_lm.utils import _get_classes

    model_type = config.get("model_type")
    try:
        model_class, args_class = _get_classes(config)
    except (ValueError, KeyError):
        raise SupercalError(f"mlx-lm does not know model_type {model_type!r}; supercal convert handles the "
                            "architectures mlx-lm has (llama, mistral, qwen2, phi3, gpt2, gpt_neox, gemma, ...)") from None
    try:
        return model_class(args_class.from_dict(config)), model_type
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise SupercalError(f"config.json does not describe a valid {model_type} model for mlx-lm: {e}") from None


def plan(config: dict, tensors: dict[str, TensorInfo], *, dtype: str, quantize: bool, q_bits: int,
         q_group_size: int) -> list[Job]:
    """Map checkpoint tensors onto mlx-lm's model for ``config`` through its own ``sanitize``."""
    from mlx.utils import tree_flatten

    model, model_type = build_model(config)
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    refs = {name: _Ref(info) for name, info in tensors.items()}
    if hasattr(model, "sanitize"):
        try:
            refs = model.sanitize(dict(refs))
        except (_Unsupported, TypeError, ValueError, AttributeError) as e:
            raise SupercalError(
                f"mlx-lm's {model_type} sanitize combines tensors ({type(e).__name__}: {str(e).splitlines()[0][:60]}), "
                "which supercal convert "
                f"does not do tensor by tensor; convert safetensors with `mlx_lm.convert --hf-path FOLDER`") from None
    if not all(isinstance(r, _Ref) for r in refs.values()):
        raise SupercalError(f"mlx-lm's {model_type} sanitize computes new tensors; convert safetensors with "
                            "`mlx_lm.convert --hf-path FOLDER`")
    missing = sorted(set(expected) - set(refs))
    if missing:
        raise SupercalError(f"the checkpoint lacks {len(missing)} tensor(s) the {model_type} model needs, e.g. "
                            f"{', '.join(missing[:3])}; it is incomplete or config.json does not belong to it")
    extra = sorted(k for k in set(refs) - set(expected) if not _BUFFER.search(k))
    if extra:
        src = [refs[e].info.name for e in extra[:3]]
        raise SupercalError(f"the checkpoint has {len(extra)} tensor(s) the {model_type} model does not, e.g. "
                            f"{', '.join(src)}; check that config.json belongs to these weights")
    modules = dict(model.named_modules())
    jobs = []
    for name, shape in expected.items():
        ref = refs[name]
        owner = modules.get(name.rpartition(".")[0])
        # what mlx_lm.convert quantizes: layers that can be (Linear, Embedding), whose width the group size divides
        q = (quantize and name.endswith(".weight") and hasattr(owner, "to_quantized") and len(shape) == 2
             and shape[-1] % q_group_size == 0)
        jobs.append(make_job(name, shape, ref.info, ref.shape, ref.info.name, dtype=dtype, quantize=q, q_bits=q_bits,
                             q_group_size=q_group_size, ops=ref.ops))
    return check_quantized(jobs, quantize, q_group_size)
