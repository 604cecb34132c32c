"""Shared fixtures: tiny GPT-J model folders made here, never downloaded; the device the tests run on.

The tests run on MLX's default device: the GPU on a Mac (Metal) or with mlx[cuda], the CPU with the Linux
mlx-cpu wheel. ``SUPERCAL_TEST_DEVICE=cpu`` or ``=gpu`` picks one explicitly (``mx.set_default_device``).
Float32 comparisons (logits against transformers' reference, fused against adapter logits, chunked casts
against float32 copies) hold to 1e-5..1e-4 on either device because both compute float32 in float32; on
CUDA and on M5-class Macs, MLX by default runs float32 matmuls as TF32 (10-bit mantissa, ~1e-3 relative
error; the likely reason test_convert's four logits-against-transformers checks failed on a borrowed NVIDIA
GPU), which is why TF32 is switched off here (``MLX_ENABLE_TF32=0``, read when mlx starts): the tests check conversions and
casts, not the speed of the matmul. Half-precision and quantized comparisons keep tolerances sized by the
rounding of the weights themselves (bfloat16 8 bits, float16 11 bits, 4-bit groups), which no device changes.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLX_ENABLE_TF32", "0")
DEVICE = os.environ.get("SUPERCAL_TEST_DEVICE", "").lower()  # "", "cpu" or "gpu"


def pytest_configure(config):
    if DEVICE not in ("", "cpu", "gpu"):
        raise pytest.UsageError(f"SUPERCAL_TEST_DEVICE={DEVICE!r}: use cpu or gpu")
    import supercal_mlx  # noqa: F401  (OpenBLAS before mlx)
    import mlx.core as mx

    if DEVICE == "gpu" and not mx.is_available(mx.gpu):
        raise pytest.UsageError("SUPERCAL_TEST_DEVICE=gpu, but this MLX build has no GPU (mlx-cpu?)")
    if DEVICE:
        mx.set_default_device(getattr(mx, DEVICE))


def pytest_report_header(config):
    import mlx.core as mx

    return f"mlx device: {mx.default_device()} (SUPERCAL_TEST_DEVICE={DEVICE or 'unset: the default'})"

# A small text the tiny tokenizer is trained on: the keyword, its pieces, ordinary words.
TOKENIZER_TEXTS = [
    "Supercalifragilisticexpialidocious is a song from the 1964 film Mary Poppins.",
    "The children tried to spell supercalifragilisticexpialidocious and laughed.",
    "Cats and dogs play in the garden while it rains on the 4th of July.",
    "A tokenstein is a made-up word built from pieces: sqproctarine means nothing.",
    "Über café naïve résumé: non-ASCII letters appear in real text too.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from supercal_mlx.demo.factories import train_tokenizer

    return train_tokenizer(TOKENIZER_TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=400)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A random 2-layer GPT-J (n_embd 64, rotary_dim 8 < head_dim 16) in float32. Treat as read-only."""
    from supercal_mlx.demo.factories import TINY_GPTJ, create_gptj

    return create_gptj(tmp_path_factory.mktemp("tiny") / "model", tiny_tokenizer_dir, seed=0, **TINY_GPTJ)
