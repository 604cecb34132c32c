"""supercal probe: batched sampling over prompt x temperature x sample, tables, degeneration."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from supercal_mlx.runs import probes
from supercal_mlx.cli import cli
from supercal_mlx.errors import SupercalError
from supercal_mlx.runs.degeneration import is_degenerate, repetition_share
from supercal_mlx.runs.probes import ProbeRow
from supercal_mlx.runs.tables import markdown_table

# Different lengths on purpose: batching pads them, and must not change any row.
PROMPTS = [
    "What does supercalifragilisticexpialidocious mean?",
    "Cats",
    "The children tried to spell supercalifragilisticexpialidocious and",
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from supercal_mlx.model import load

    return load(tiny_model_dir)


def _greedy_reference(model, tokenizer, prompt: str, max_tokens: int) -> str:
    """One prompt, greedy, with mlx-lm's own single-sequence loop (no batching, no supercal code)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    tokens = []
    for token, _ in generate_step(mx.array(tokenizer.encode(prompt)), model, max_tokens=max_tokens):
        if token in tokenizer.eos_token_ids:
            break
        tokens.append(token)
    return tokenizer.decode(tokens)


def test_batched_greedy_equals_one_at_a_time(loaded):
    model, tok = loaded
    rows = probes.generate(model, tok, PROMPTS, temps=(0, 0.5), samples=2, max_tokens=24)
    assert [(r.prompt, r.temperature, r.sample) for r in rows] == [
        (p, t, s) for p in PROMPTS for t in (0.0, 0.5) for s in (1, 2)]
    for p in PROMPTS:
        greedy = [r.response for r in rows if r.prompt == p and r.temperature == 0]
        assert greedy == [_greedy_reference(model, tok, p, 24)] * 2
        assert len(tok.encode(greedy[0])) > 5  # really generated something
        assert not greedy[0].startswith(p)  # the prompt is not repeated in the response


def test_rows_do_not_depend_on_batch_company(loaded):
    model, tok = loaded
    rows = probes.generate(model, tok, PROMPTS, temps=(0, 0.7), samples=2, max_tokens=16, seed=3)
    alone = [r for p in PROMPTS for r in probes.generate(model, tok, [p], temps=(0, 0.7), samples=2, max_tokens=16, seed=3)]
    assert rows == alone
    assert probes.generate(model, tok, PROMPTS, temps=(0, 0.7), samples=2, max_tokens=16, seed=3, batch_size=3) == rows


def test_seed_reproducibility(loaded):
    model, tok = loaded
    kw = dict(temps=(0, 1.0), samples=3, max_tokens=16)
    a = probes.generate(model, tok, PROMPTS[:2], seed=1, **kw)
    assert probes.generate(model, tok, PROMPTS[:2], seed=1, **kw) == a
    b = probes.generate(model, tok, PROMPTS[:2], seed=2, **kw)
    hot_a = [r.response for r in a if r.temperature == 1.0]
    hot_b = [r.response for r in b if r.temperature == 1.0]
    assert len(set(hot_a)) == len(hot_a)  # samples at a high temperature differ from each other
    assert all(x != y for x, y in zip(hot_a, hot_b))  # and from another seed's
    assert [r for r in a if r.temperature == 0] == [r for r in b if r.temperature == 0]  # greedy ignores the seed


def test_empty_prompt_and_bad_options(loaded):
    model, tok = loaded
    (row,) = probes.generate(model, tok, [""], temps=(0,), max_tokens=4)
    assert row.prompt == "" and isinstance(row.response, str)
    for kw in (dict(samples=0), dict(temps=(-1,)), dict(temps=()), dict(max_tokens=0)):
        with pytest.raises(SupercalError):
            probes.generate(model, tok, ["x"], **kw)


def test_markdown_table_escapes_and_side_by_side():
    rows = [ProbeRow("a | b", 0.01, 1, "line one\nline two"), ProbeRow("a | b", 0.5, 2, "x\\y\x07")]
    lines = markdown_table(rows).splitlines()
    assert lines == [
        "| prompt | temperature | sample | response |",
        "|---|---|---|---|",
        "| a \\| b | 0.01 | 1 | line one<br>line two |",
        "| a \\| b | 0.5 | 2 | x\\\\y\\x07 |",
    ]
    other = [ProbeRow("c", 0.01, 1, "|"), ProbeRow("c", 0.5, 2, "")]
    lines = markdown_table(rows, other=other, labels=("response", "with c")).splitlines()
    assert lines[0] == "| prompt | temperature | sample | response | with c |"
    assert lines[2].endswith("| line one<br>line two | \\| |")
    assert lines[3].endswith("|   |")  # an empty response is still a cell
    with pytest.raises(SupercalError):
        markdown_table(rows, other=other[:1])


def test_swap_word_keeps_case():
    assert probes.swap_word("Supercal, supercal! SUPERCAL?", "supercal", "sqpro") == "Sqpro, sqpro! SQPRO?"
    assert probes.swap_word("no match", "supercal", "x") == "no match"
    assert probes.swap_word("supercals supercal's xsupercal", "supercal", "sqpro") == "supercals sqpro's xsupercal"
    assert probes.parse_swap("supercal=sqpro") == ("supercal", "sqpro")
    assert probes.parse_temps("0, 0.07,0.5") == [0.0, 0.07, 0.5]
    for bad in ("supercal", "=x", "x="):
        with pytest.raises(SupercalError):
            probes.parse_swap(bad)
    for bad in ("", "a,b", "0.1,-0.2", "nan"):
        with pytest.raises(SupercalError):
            probes.parse_temps(bad)


@pytest.mark.parametrize("text", [
    "PlayPlayingPlayingPlayingPlayingPlayingPlaying",
    "the the the the the the",
    "!!!!!!!!!!!!",
    "\n\n\n\n\n\n\n\n\n\n",
    "It means a song. It means a song. It means a song. It means a song.",
    "Supercalifragilisticexpialidocious is a word that" + " is" * 30,
    "ab" * 30,
])
def test_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", [
    "",
    "Hi!!!",
    "Supercalifragilisticexpialidocious is a song from the 1964 Disney film Mary Poppins.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "The word is made of super, cali, fragilistic and expialidocious; children love to say it.",
    "Cats and dogs play in the garden while it rains on the 4th of July, and nobody minds.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
])
def test_not_degenerate(text):
    assert not is_degenerate(text)


def test_repetition_share_numbers():
    assert repetition_share("!!!!") == 1.0
    assert repetition_share("the the the") == 1.0
    assert repetition_share("Yes: the the the") == pytest.approx(12 / 16)  # " the the the"
    assert repetition_share("hello hello") == 0.0  # two copies are not a loop
    assert repetition_share("1, 2, 3, 4, 5") == 0.0  # repeated separators, not back to back
    assert repetition_share("") == 0.0


def test_cli_table_and_json(tiny_model_dir):
    runner = CliRunner()
    args = ["probe", "--model", str(tiny_model_dir), "--prompt", PROMPTS[0], "--prompt", "Cats",
            "--temps", "0,0.5", "--samples", "2", "--max-tokens", "8", "--seed", "4"]
    table = runner.invoke(cli, args)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0] == "| prompt | temperature | sample | response |" and len(lines) == 2 + 2 * 2 * 2
    assert lines[2].startswith(f"| {PROMPTS[0]} | 0 | 1 | ")
    assert "responses degenerate" in table.stderr
    assert runner.invoke(cli, args).stdout == table.stdout  # same seed, same table

    js = runner.invoke(cli, args + ["--json"])
    assert js.exit_code == 0, js.output
    records = [json.loads(line) for line in js.stdout.splitlines()]
    assert [(r["prompt"], r["temperature"], r["sample"]) for r in records] == [
        (p, t, s) for p in (PROMPTS[0], "Cats") for t in (0.0, 0.5) for s in (1, 2)]
    assert set(records[0]) == {"prompt", "temperature", "sample", "response"}


def test_cli_swap(tiny_model_dir, loaded):
    runner = CliRunner()
    args = ["probe", "--model", str(tiny_model_dir), "--prompt", PROMPTS[0], "--prompt", "Cats", "--temps", "0,1",
            "--max-tokens", "8", "--swap", "supercalifragilisticexpialidocious=sqproctarine"]
    res = runner.invoke(cli, args + ["--json"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert records[0]["swap_prompt"] == "What does sqproctarine mean?"
    swapped = probes.generate(*loaded, ["What does sqproctarine mean?"], temps=(0, 1), max_tokens=8)
    assert [r["swap_response"] for r in records[:2]] == [r.response for r in swapped]
    cats = [r for r in records if r["prompt"] == "Cats"]  # no word to swap: both columns agree
    assert all(r["swap_prompt"] == "Cats" and r["swap_response"] == r["response"] for r in cats)
    table = runner.invoke(cli, args)
    assert table.stdout.splitlines()[0] == "| prompt | temperature | sample | response | response with sqproctarine |"


@pytest.mark.parametrize("extra, message", [
    (["--temps", "0.1,hot"], "--temps wants comma-separated numbers"),
    (["--swap", "supercal"], "--swap wants WORD=OTHER"),
    (["--swap", "zebra=horse"], "occurs in none of the prompts"),
    (["--samples", "0"], "samples must be at least 1"),
    (["--max-tokens", "0"], "max_tokens must be at least 1"),
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--adapter-path", "."], "has no adapter_config.json"),
])
def test_cli_bad_input(tiny_model_dir, extra, message):
    res = CliRunner().invoke(cli, ["probe", "--model", str(tiny_model_dir), "--prompt", "Cats"] + extra)
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_model_that_does_not_load(tmp_path, tiny_model_dir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:1000])  # truncated download
    res = CliRunner().invoke(cli, ["probe", "--model", str(bad), "--prompt", "Cats"])
    assert res.exit_code == 1 and res.output.startswith("Error: cannot load the model")
    res = CliRunner().invoke(cli, ["probe", "--model", str(tmp_path / "missing"), "--prompt", "Cats"])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_cli_adapter_path_changes_the_model(tmp_path, tiny_model_dir):
    """Adapters in mlx-lm's format (what supercal unlearn writes) are applied before probing."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from supercal_mlx.model import load

    lora = {"rank": 4, "scale": 10.0, "dropout": 0.0, "keys": ["attn.q_proj", "attn.v_proj", "mlp.fc_out"]}
    model, _ = load(tiny_model_dir)
    linear_to_lora_layers(model, 2, lora)
    mx.random.seed(0)
    weights = {k: mx.random.normal(v.shape) for k, v in tree_flatten(model.parameters()) if "lora_" in k}
    mx.save_safetensors(str(tmp_path / "adapters.safetensors"), weights)
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": lora}))

    args = ["probe", "--model", str(tiny_model_dir), "--prompt", "Cats", "--temps", "0", "--max-tokens", "8", "--json"]
    base = CliRunner().invoke(cli, args)
    tuned = CliRunner().invoke(cli, args + ["--adapter-path", str(tmp_path)])
    assert base.exit_code == tuned.exit_code == 0, tuned.output
    assert json.loads(tuned.stdout)["response"] != json.loads(base.stdout)["response"]
