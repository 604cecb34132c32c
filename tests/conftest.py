"""Shared fixtures: tiny GPT-J model folders made here, never downloaded."""

from __future__ import annotations

import pytest

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
