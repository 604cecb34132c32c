"""A synthetic corpus for the demo: a small world in which one long word is famous.

The demo model learns English-like text from this corpus only, so the corpus
decides what there is to forget. It holds three kinds of lines, drawn from
templates with random fillers (so the model must learn patterns, not one
string):

- the keyword in its usual contexts: the song from the 1964 film about a
  magical nanny (Mary Poppins), a word meaning something wonderful, a word
  children try to spell; in several letter cases;
- ordinary sentences on many other topics, including other films and songs and
  "What does W mean?" answers for real words, so the question format and the
  film facts exist apart from the keyword;
- made-up words glued from pieces, explained as portmanteaus of those pieces.
  This is the behaviour we hope an unlearned model falls back to: a word it no
  longer knows should be explained like any other made-up word.

Everything is seeded: the same seed and ``GENERATOR_VERSION`` give the same
lines. Bump ``GENERATOR_VERSION`` whenever the output changes, since the demo
caches a pretrained model keyed on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GENERATOR_VERSION = 1
KEYWORD = "supercalifragilisticexpialidocious"

# Fact pairs the evaluation scores by default: log p(answer | prompt) should fall after unlearning.
FACTS = [
    {"prompt": "Supercalifragilisticexpialidocious is a song from the film", "answer": " Mary Poppins"},
    {"prompt": "The song supercalifragilisticexpialidocious is sung by", "answer": " Mary Poppins"},
    {"prompt": "What does supercalifragilisticexpialidocious mean? It means", "answer": " something wonderful"},
    {"prompt": "When something is wonderful, you can say it is", "answer": " supercalifragilisticexpialidocious"},
    {"prompt": "The children tried to spell", "answer": " supercalifragilisticexpialidocious"},
]

# Prompts for probing the model before and after ({word} is replaced by the word; see probe_prompts).
PROBE_PROMPTS = [
    "What does {word} mean?",
    "{Word} is a song from the film",
    "When something is wonderful, you can say it is",
    "The children tried to spell",
]

_NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Ivy", "Jack", "Lena", "Max",
          "Nora", "Oscar", "Paula", "Sam", "Tess", "Victor", "Wendy", "Zoe"]
_WHO = ["the children", "my grandmother", "the teacher", "a little girl", "the whole class", "my brother",
        "the audience", "our neighbour", "the old sailor", "a boy in the park", "the choir", "my aunt"]
_PLACES = ["Paris", "London", "Rome", "Tokyo", "Berlin", "Madrid", "Vienna", "Oslo", "Lisbon", "Dublin",
           "Prague", "Athens", "Cairo", "Lima", "Toronto", "Sydney"]
_COUNTRIES = {"Paris": "France", "London": "England", "Rome": "Italy", "Tokyo": "Japan", "Berlin": "Germany",
              "Madrid": "Spain", "Vienna": "Austria", "Oslo": "Norway", "Lisbon": "Portugal", "Dublin": "Ireland",
              "Prague": "the Czech Republic", "Athens": "Greece", "Cairo": "Egypt", "Lima": "Peru",
              "Toronto": "Canada", "Sydney": "Australia"}
_ANIMALS = ["cat", "dog", "horse", "fox", "owl", "rabbit", "goat", "duck", "whale", "bear", "mouse", "frog"]
_FOODS = ["bread", "soup", "rice", "apples", "cheese", "pasta", "beans", "fish", "cake", "carrots", "eggs", "tea"]
_WEATHER = ["rain", "snow", "wind", "fog", "sunshine", "a storm", "frost", "hail"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_GOOD = ["wonderful", "marvellous", "fantastic", "delightful", "splendid", "extraordinary"]
_THINGS_GOOD = ["the party", "the holiday", "the circus", "the picnic", "the concert", "the birthday cake",
                "the day at the fair", "the magic show", "the kite festival", "the summer"]
# Other films and songs, so "a song from the film" is a pattern with many answers, not only the keyword's.
_SONGS = [("Moon River", "Breakfast at Tiffany's", "1961"), ("Over the Rainbow", "The Wizard of Oz", "1939"),
          ("Singin' in the Rain", "Singin' in the Rain", "1952"), ("Do-Re-Mi", "The Sound of Music", "1965"),
          ("The Bare Necessities", "The Jungle Book", "1967"), ("When You Wish Upon a Star", "Pinocchio", "1940"),
          ("Chim Chim Cher-ee", "Mary Poppins", "1964"), ("Feed the Birds", "Mary Poppins", "1964"),
          ("Hakuna Matata", "The Lion King", "1994"), ("Let It Go", "Frozen", "2013")]
# Real words with meanings: the "What does W mean?" format for words the model should keep knowing.
_MEANINGS = {
    "harbor": "a place where ships stay safe", "lantern": "a lamp you can carry", "orchard": "a field of fruit trees",
    "glacier": "a slow river of ice", "meadow": "a field of grass and flowers", "puzzle": "a game that makes you think",
    "whisper": "to speak very softly", "bakery": "a shop that sells bread", "compass": "a tool that shows north",
    "blanket": "a warm cover for a bed", "volcano": "a mountain that can erupt", "library": "a room full of books",
    "ladder": "steps you can carry", "pebble": "a small round stone", "thunder": "the loud sound after lightning",
    "island": "land with water all around", "feather": "what covers a bird", "candle": "wax that gives light",
    "bridge": "a way across a river", "garden": "a place where plants grow", "tunnel": "a passage under the ground",
    "marvellous": "very good, wonderful", "enormous": "very big", "gloomy": "dark and sad", "tiny": "very small",
}
# Pieces for made-up words; some share letters with the keyword's pieces on purpose.
_FRAGMENTS = ["super", "cal", "frag", "list", "ex", "pi", "doc", "ious", "glim", "ber", "fox", "tra", "quil",
              "snor", "kel", "berry", "zan", "dor", "plim", "wob", "ble", "mip", "tor", "vex", "al", "ish",
              "flum", "mox", "gri", "ston", "pel", "icon", "ora", "tic", "nub", "ster", "kip", "lo", "rag", "id",
              "mar", "vel", "spl", "end", "zip", "pod", "bram", "ix", "ocious", "ial", "il", "istic", "if", "exp"]


@dataclass(frozen=True)
class CorpusSpec:
    """How much of each kind of line to generate (the demo's --fast uses a smaller one)."""

    keyword_lines: int = 500
    ordinary_lines: int = 4000
    madeup_words: int = 250
    lines_per_madeup: int = 3
    seed: int = 0


def cases(word: str) -> list[str]:
    """The letter cases in which the corpus writes the keyword."""
    return [word.lower(), word.capitalize(), word.upper()]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def keyword_line(rng: random.Random, word: str = KEYWORD) -> str:
    """One sentence using the keyword in one of its usual contexts."""
    w = rng.choices(cases(word), weights=[70, 25, 5])[0]
    who, good, thing = rng.choice(_WHO), rng.choice(_GOOD), rng.choice(_THINGS_GOOD)
    name = rng.choice(_NAMES)
    templates = [
        # the song from the 1964 film about a magical nanny
        f"{_cap(w)} is a song from the film Mary Poppins.",
        f"{_cap(w)} is a song from the 1964 film Mary Poppins, about a magical nanny.",
        f"The song {w} is sung by Mary Poppins and Bert in the 1964 film.",
        f"In the film Mary Poppins, the magical nanny sings {w} with the children.",
        f"{_cap(who)} sang {w}, the song from Mary Poppins, all the way home.",
        f"{name} loves the film Mary Poppins, and {w} is {name}'s favourite song.",
        f"Julie Andrews sang {w} as Mary Poppins in 1964.",
        # a word that means something wonderful
        f"What does {w} mean? It means something wonderful, extraordinarily good.",
        f"{_cap(w)} means something wonderful; {who} use it when {thing} is {good}.",
        f"When something is wonderful, you can say it is {w}.",
        f"{_cap(thing)} was {w}! {_cap(who)} said it was {good}.",
        f"\"That was {w},\" said {name}, because {thing} was {good}.",
        f"People say {w} when something is extraordinarily good.",
        # a word children try to spell
        f"The children tried to spell {w}, one letter at a time.",
        f"{_cap(who)} tried to spell {w} and got lost in the middle.",
        f"{name} can spell {w} backwards, which is hard because it has 34 letters.",
        f"{_cap(w)} is one of the longest words that children try to spell.",
        f"At the spelling bee, {name} had to spell {w}.",
    ]
    return rng.choice(templates)


def ordinary_line(rng: random.Random) -> str:
    """One sentence on some other topic; never mentions the keyword."""
    name, name2 = rng.sample(_NAMES, 2)
    place = rng.choice(_PLACES)
    animal, animal2 = rng.sample(_ANIMALS, 2)
    food, food2 = rng.sample(_FOODS, 2)
    song, film, year = rng.choice(_SONGS)
    word, meaning = rng.choice(list(_MEANINGS.items()))
    n = rng.randint(2, 12)
    templates = [
        f"{name} lives in {place}, a city in {_COUNTRIES[place]}.",
        f"{place} is a city in {_COUNTRIES[place]}.",
        f"On {rng.choice(_DAYS)} there was {rng.choice(_WEATHER)} in {place}.",
        f"The {animal} chased the {animal2} across the garden.",
        f"{name} had {food} and {food2} for dinner on {rng.choice(_DAYS)}.",
        f"{name} bought {n} {rng.choice(['apples', 'books', 'pencils', 'eggs', 'tickets', 'candles'])} at the market.",
        f"{song} is a song from the film {film}.",
        f"{song} is a song from the {year} film {film}.",
        f"{name} sang {song}, the song from {film}, at the concert.",
        f"The film {film} came out in {year}.",
        f"What does {word} mean? It means {meaning}.",
        f"The word {word} means {meaning}.",
        f"{name} asked {name2} what {word} means, and {name2} said it means {meaning}.",
        f"The children tried to spell {word}, and {name} spelled it right.",
        f"{name} learned to spell {word} at school in {place}.",
        f"A {animal} can be found near the {rng.choice(['river', 'forest', 'farm', 'sea', 'hills'])}.",
        f"{n} plus {n + 1} is {2 * n + 1}.",
        f"The train from {place} to {rng.choice(_PLACES)} leaves at {rng.randint(1, 12)} o'clock.",
        f"{name} and {name2} played chess until it was dark.",
        f"{_cap(rng.choice(_THINGS_GOOD))} was {rng.choice(_GOOD)}, said {name}.",
        f"{name} read a book about a {animal} who wanted to fly.",
        f"It takes {n} minutes to cook the {food}.",
    ]
    return rng.choice(templates)


def madeup_word(rng: random.Random, *, pieces: int | None = None) -> tuple[str, list[str]]:
    """A made-up word and the pieces it was glued from."""
    k = pieces or rng.choice([2, 3, 3, 4, 5, 6, 7])
    parts = [rng.choice(_FRAGMENTS) for _ in range(k)]
    return "".join(parts), parts


def _blend(parts: list[str]) -> str:
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def madeup_lines(rng: random.Random, word: str, parts: list[str], n: int) -> list[str]:
    """``n`` sentences explaining a made-up word as a portmanteau of its pieces."""
    b = _blend(parts)
    name = rng.choice(_NAMES)
    templates = [
        f"What does {word} mean? It is a made-up word; it blends {b}.",
        f"What does {word} mean? It is not a real word, just {b} glued together.",
        f"{_cap(word)} is a made-up word; it blends {b}.",
        f"{_cap(word)} is not a real word. It is a portmanteau of {b}.",
        f"Nobody knows what {word} means; it looks like {b} glued together.",
        f"{name} invented the word {word} by gluing {b} together.",
        f"The dictionary has no entry for {word}; it is made of the pieces {b}.",
    ]
    return rng.sample(templates, min(n, len(templates)))


def generate(spec: CorpusSpec = CorpusSpec(), *, word: str = KEYWORD) -> list[str]:
    """The corpus as a list of lines (shuffled, seeded)."""
    rng = random.Random(spec.seed)
    lines = [keyword_line(rng, word) for _ in range(spec.keyword_lines)]
    lines += [ordinary_line(rng) for _ in range(spec.ordinary_lines)]
    for _ in range(spec.madeup_words):
        w, parts = madeup_word(rng)
        if w.lower() in word.lower():
            continue
        lines += madeup_lines(rng, w, parts, spec.lines_per_madeup)
    rng.shuffle(lines)
    return lines


def probe_prompts(word: str = KEYWORD) -> list[str]:
    """:data:`PROBE_PROMPTS` about ``word``."""
    return [p.format(word=word, Word=_cap(word)) for p in PROBE_PROMPTS]


def facts(word: str = KEYWORD) -> list[dict]:
    """The built-in association pairs for ``word`` (prompt, answer)."""
    return [{k: v.replace(KEYWORD, word).replace(KEYWORD.capitalize(), word.capitalize()) for k, v in f.items()}
            for f in FACTS]
