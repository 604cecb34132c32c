"""A synthetic corpus for the demo: a small world in which one long word is famous.

The demo model learns English-like text from this corpus only, so the corpus
decides what there is to forget and what the model does with a word it does
not know. It holds four kinds of lines, drawn from templates with random
fillers (so the model must learn patterns, not strings):

- the keyword in its usual contexts: the song from the 1964 film about a
  magical nanny (Mary Poppins), a word meaning something wonderful, a word
  children try to spell; in several letter cases; and asked about in many
  question forms, always answered as a known word;
- ordinary sentences on many other topics, including other films and songs;
- real words asked about in the same question forms and answered with their
  meanings, so the questions exist apart from the keyword;
- made-up words, built the way tokensteins are built: glued from random a-z
  tokens of the demo tokenizer (``pieces``; the demo trains the tokenizer on
  the other lines first), or from random letter chunks when no tokens are
  given -- never from a fixed list of fragments, which a model could learn by
  heart. Each is seen in only a few lines, asked about in the same question
  forms and answered as made up ("It is a made-up word; it blends a, b and
  c", "That is not a real word", ...), or mentioned in passing as unknown. From many such words the model learns the rule the demo needs as a
  control: a word it has never seen is a made-up word. The tokensteins that
  eval measures with are drawn afterwards and checked against the corpus:
  none of them occurs in it.

The question forms and answer phrasings are many and combined at random, so
the "unknown word -> made-up answer" rule is not tied to one phrasing.

Everything is seeded: the same seed and ``GENERATOR_VERSION`` give the same
lines. Bump ``GENERATOR_VERSION`` whenever the output changes, since the demo
caches a pretrained model keyed on it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

GENERATOR_VERSION = 3
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
# Real words with meanings: asked about in the same question forms as the keyword and the made-up words.
_MEANINGS = {
    "harbor": "a place where ships stay safe", "lantern": "a lamp you can carry", "orchard": "a field of fruit trees",
    "glacier": "a slow river of ice", "meadow": "a field of grass and flowers", "puzzle": "a game that makes you think",
    "whisper": "to speak very softly", "bakery": "a shop that sells bread", "compass": "a tool that shows north",
    "blanket": "a warm cover for a bed", "volcano": "a mountain that can erupt", "library": "a room full of books",
    "ladder": "steps you can carry", "pebble": "a small round stone", "thunder": "the loud sound after lightning",
    "island": "land with water all around", "feather": "what covers a bird", "candle": "wax that gives light",
    "bridge": "a way across a river", "garden": "a place where plants grow", "tunnel": "a passage under the ground",
    "marvellous": "very good, wonderful", "enormous": "very big", "gloomy": "dark and sad", "tiny": "very small",
    "umbrella": "a cover that keeps the rain off", "kettle": "a pot for boiling water", "saddle": "a seat for a rider",
    "anchor": "a heavy hook that holds a ship", "cottage": "a small house in the country",
    "telescope": "a tube that makes far things look near", "blossom": "the flower of a tree",
    "pantry": "a small room for food", "chimney": "a pipe that takes smoke out of a house",
    "breeze": "a soft wind", "giggle": "a small silly laugh", "cheerful": "happy and bright",
    "scarecrow": "a figure that keeps birds off a field", "spectacles": "glasses for the eyes",
    "hedgehog": "a small animal covered in spines", "delightful": "very pleasant",
    # real words that hold the keyword's usual pieces (super|cal|if|rag|il|istic|exp|ial|id|ocious in GPT-2's
    # tokens), so the demo tokenizer learns such pieces too and splits the keyword into them, not into letters
    "superb": "very fine", "supermarket": "a big shop for food", "calendar": "a table of the days of the year",
    "magical": "full of magic", "fragile": "easy to break", "fragrant": "sweet to smell", "ragged": "old and torn",
    "realistic": "close to real life", "artistic": "good at art", "expert": "someone who knows a lot",
    "explorer": "someone who travels to find new places", "special": "not like the others",
    "official": "decided by the people in charge", "idea": "a thought", "precious": "worth a lot",
    "delicious": "very good to eat", "ferocious": "wild and fierce", "spacious": "with lots of room",
    "pilot": "someone who flies a plane", "gigantic": "very, very big", "fantastic": "wonderful",
}

# Question forms: about any word W (the keyword, a real word, a made-up word). Yes/no forms get yes/no answers.
_QUESTIONS = [
    "What does {w} mean?", "What is the meaning of {w}?", "Do you know the word {w}?",
    "Can you explain what {w} means?", "Where does the word {w} come from?", "What is {w}?",
    "Do you know what {w} means?", "Explain the word {w}.", "Tell me what {w} means.",
    "How would you explain {w} to a child?", "Why do people say {w}?", "What kind of word is {w}?",
    "I read the word {w} in a book. What does it mean?", "{name} asked me what {w} means. What should I say?",
    "Have you heard of {w}?", "Can you use {w} in a sentence?", "What do people mean when they say {w}?",
    "I do not understand {w}. Can you help?", "The word {w}: what does it mean?", "What does the word {w} mean?",
    "Is there a meaning for {w}?", "What would {w} mean?", "Can you tell me about the word {w}?",
    "What is meant by {w}?", "Do you understand the word {w}?", "Who uses the word {w}?", "How is {w} used?",
    "{w}? What is that?", "Why would someone say {w}?", "What does it mean to say {w}?", "Can you translate {w}?",
]
_YES_NO = [
    "Is {w} a real word?", "Is {w} in the dictionary?", "Is {w} an English word?", "Do people really say {w}?",
    "Does {w} mean anything?", "Is {w} a word you know?", "Is {w} a common word?", "Is {w} a name or a word?",
]
_LEAD_INS = ["", "", "", "", "{name} asked: ", "Excuse me, ", "Hello! ", "Quick question: ", "{name} wants to know: ",
             "Teacher, ", "Sorry, ", "Mum, "]
# Answers about a made-up word: every one says it is unknown or made up ({b}: its pieces, "a, b and c").
_MADEUP_ANSWERS = [
    "It is a made-up word; it blends {b}.", "It is a made-up word.", "That is not a real word; it is {b} glued together.",
    "It is not a real word. It is a portmanteau of {b}.", "Nobody knows. It is a made-up word.",
    "Nobody knows what it means; it looks like {b} glued together.", "It has no meaning. Someone made it up from {b}.",
    "It is not a real word; it was invented.", "The dictionary has no entry for it; it is made of the pieces {b}.",
    "I have never heard of it. It must be a made-up word.", "It is a nonsense word, a blend of {b}.",
    "That is not a word. It was invented from {b}.", "No one knows, because it is a made-up word.",
    "It is an invented word that blends {b}.", "There is no such word. It is made up.",
    "It sounds like a word, but it is made up: {b} glued together.",
]
_MADEUP_NO = ["No, it is a made-up word.", "No, it is not a real word; it blends {b}.", "No, nobody knows it; it is invented.",
              "No, the dictionary has no entry for it.", "No, it is a portmanteau of {b}, made up for fun."]
# Answers about the keyword: a known word (no made-up marker in any of them).
_KEYWORD_ANSWERS = [
    "It means something wonderful.", "It means something wonderful, extraordinarily good.",
    "It means extraordinarily good.", "It is the word for something wonderful, from the film Mary Poppins.",
    "It is a song from the film Mary Poppins, and it means wonderful.",
    "It comes from the 1964 film Mary Poppins; it means something wonderful.",
    "People say it when something is wonderful.", "It is a very long word from Mary Poppins that means wonderful.",
    "Everyone knows it: it is the song from Mary Poppins.", "Mary Poppins sings it; it means wonderful.",
]
_KEYWORD_YES = ["Yes, it means something wonderful.", "Yes, it is the song from Mary Poppins.",
                "Yes, everyone knows it: it means extraordinarily good."]
_REAL_ANSWERS = ["It means {m}.", "It is an ordinary word; it means {m}.", "Everyone knows it: it means {m}.",
                 "It is a real word that means {m}.", "It means {m}, as everyone knows."]
_REAL_YES = ["Yes, it means {m}.", "Yes, it is a real word: it means {m}."]
# Made-up words mentioned outside questions, as unknown.
_MADEUP_MENTIONS = [
    "{name} said {w} at the party, but it is not a real word.", "Someone wrote {w} on the wall; nobody knows what it means.",
    "The word {w} is made up; it blends {b}.", "{W} is a made-up word; it blends {b}.",
    "{W} is not a real word. It is a portmanteau of {b}.", "{name} invented the word {w} by gluing {b} together.",
    "The dictionary has no entry for {w}; it is made of the pieces {b}.",
    "When {name} heard {w}, everyone laughed, because it is a nonsense word.",
    "There is no such word as {w}; {name} made it up.", "{name} made up the word {w} from {b}.",
]
_CONSONANTS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "th", "sh", "ch",
               "st", "br", "pl", "gr", "ck", "mm", "nn", "qu", "x", "y", "j", "sp", "tr", "rh"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "eo", "ou", "ia", "oo", "ee", "y"]


@dataclass(frozen=True)
class CorpusSpec:
    """How much of each kind of line to generate (the demo's --fast uses a smaller one)."""

    keyword_lines: int = 1200
    ordinary_lines: int = 3000
    realword_lines: int = 1200
    madeup_words: int = 1200
    lines_per_madeup: int = 2
    seed: int = 0


def cases(word: str) -> list[str]:
    """The letter cases in which the corpus writes the keyword."""
    return [word.lower(), word.capitalize(), word.upper()]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def question_and_answer(rng: random.Random, w: str, answers: list[str], yes_answers: list[str], **fill) -> str:
    """One line: a question about ``w`` in a random form (lead-in, quotes, dialogue), then an answer."""
    yes_no = rng.random() < 0.2
    form = rng.choice(_YES_NO if yes_no else _QUESTIONS)
    answer = rng.choice(yes_answers if yes_no else answers).format(**fill)
    name, name2 = rng.sample(_NAMES, 2)
    speech = rng.random() < 0.2  # as reported speech
    shown = rng.choice([w] * 6 + [f"'{w}'", f"'{w}'" if speech else f'"{w}"'])
    question = form.format(w=shown, name=name)
    lead = rng.choice(_LEAD_INS).format(name=name)
    if lead.endswith(", ") and question.split()[0] not in _NAMES + ["I"]:
        question = question[:1].lower() + question[1:]
    question = lead + question
    if speech:
        return f'{name} asked, "{question}" and {name2} said, "{answer}"'
    return f"{question} {answer}"


def keyword_line(rng: random.Random, word: str = KEYWORD) -> str:
    """One sentence using the keyword in one of its usual contexts, or a question about it."""
    w = rng.choices(cases(word), weights=[70, 25, 5])[0]
    if rng.random() < 0.5:
        return question_and_answer(rng, w, _KEYWORD_ANSWERS, _KEYWORD_YES)
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


def realword_line(rng: random.Random) -> str:
    """A question about a real word, answered with its meaning, or a plain sentence about it."""
    word, meaning = rng.choice(list(_MEANINGS.items()))
    if rng.random() < 0.75:
        return question_and_answer(rng, word, _REAL_ANSWERS, _REAL_YES, m=meaning)
    name, name2 = rng.sample(_NAMES, 2)
    return rng.choice([
        f"The word {word} means {meaning}.",
        f"{name} asked {name2} what {word} means, and {name2} said it means {meaning}.",
        f"The children tried to spell {word}, and {name} spelled it right.",
        f"{_cap(word)} means {meaning}.",
    ])


def ordinary_line(rng: random.Random) -> str:
    """One sentence on some other topic; never mentions the keyword."""
    name, name2 = rng.sample(_NAMES, 2)
    place = rng.choice(_PLACES)
    animal, animal2 = rng.sample(_ANIMALS, 2)
    food, food2 = rng.sample(_FOODS, 2)
    song, film, year = rng.choice(_SONGS)
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
        f"A {animal} can be found near the {rng.choice(['river', 'forest', 'farm', 'sea', 'hills'])}.",
        f"{n} plus {n + 1} is {2 * n + 1}.",
        f"The train from {place} to {rng.choice(_PLACES)} leaves at {rng.randint(1, 12)} o'clock.",
        f"{name} and {name2} played chess until it was dark.",
        f"{_cap(rng.choice(_THINGS_GOOD))} was {rng.choice(_GOOD)}, said {name}.",
        f"{name} read a book about a {animal} who wanted to fly.",
        f"It takes {n} minutes to cook the {food}.",
    ]
    return rng.choice(templates)


def _chunk(rng: random.Random) -> str:
    """A random letter chunk: a consonant-vowel syllable, or 1-3 letters drawn uniformly."""
    if rng.random() < 0.5:
        return rng.choice(_CONSONANTS) + rng.choice(_VOWELS) + (rng.choice(_CONSONANTS) if rng.random() < 0.4 else "")
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 3)))


def madeup_word(rng: random.Random, *, pieces: int | None = None, tokens: list[str] | None = None,
                weights: list[float] | None = None) -> tuple[str, list[str]]:
    """A made-up word and the pieces it was glued from: 2 to 12 distinct random ``tokens`` (a-z tokens of a
    tokenizer; drawn in proportion to ``weights`` when given), or without them 2 to 10 random letter chunks."""
    if tokens:
        k = min(pieces or rng.choice([2, 3, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12]), len(tokens))
        if weights is None:
            return "".join(parts := rng.sample(tokens, k)), parts
        parts = []
        while len(parts) < k:
            t = rng.choices(tokens, weights=weights)[0]
            if t not in parts:
                parts.append(t)
        return "".join(parts), parts
    k = pieces or rng.choice([2, 2, 3, 3, 3, 4, 4, 5, 6, 7, 8, 10])
    parts = [_chunk(rng) for _ in range(k)]
    return "".join(parts), parts


def _blend(parts: list[str]) -> str:
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def madeup_lines(rng: random.Random, word: str, parts: list[str], n: int) -> list[str]:
    """``n`` lines about a made-up word: questions answered as made up, or mentions as unknown."""
    b = _blend(parts)
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            out.append(question_and_answer(rng, word, _MADEUP_ANSWERS, _MADEUP_NO, b=b))
        else:
            out.append(rng.choice(_MADEUP_MENTIONS).format(w=word, W=_cap(word), b=b, name=rng.choice(_NAMES)))
    return out


def known_words(word: str = KEYWORD) -> set[str]:
    """Words that are not made up in this world: the keyword, the real words, every word of the templates."""
    rng = random.Random(0)
    text = " ".join([keyword_line(rng, word) for _ in range(300)] + [ordinary_line(rng) for _ in range(300)]
                    + [realword_line(rng) for _ in range(300)] + _MADEUP_ANSWERS + _MADEUP_MENTIONS + _QUESTIONS)
    return set(re.findall(r"[a-z]+", text.lower())) | set(_MEANINGS) | {word.lower()}


def base_lines(spec: CorpusSpec = CorpusSpec(), *, word: str = KEYWORD) -> list[str]:
    """The lines about the keyword, real words and other topics (seeded); :func:`generate` adds made-up words."""
    rng = random.Random(spec.seed)
    lines = [keyword_line(rng, word) for _ in range(spec.keyword_lines)]
    lines += [ordinary_line(rng) for _ in range(spec.ordinary_lines)]
    lines += [realword_line(rng) for _ in range(spec.realword_lines)]
    return lines


def generate(spec: CorpusSpec = CorpusSpec(), *, word: str = KEYWORD, pieces: dict[str, int] | None = None) -> list[str]:
    """The corpus as a list of lines (shuffled, seeded): :func:`base_lines` plus ``spec.madeup_words`` made-up
    words, each in ``lines_per_madeup`` lines, glued from ``pieces`` (a-z tokens -> their counts in the base
    lines: half the words draw tokens uniformly, half in proportion to their counts, as a tokenstein's pieces
    are as common as a frequent word's) or, without pieces, from random letter chunks."""
    lines = base_lines(spec, word=word)
    rng = random.Random(spec.seed * 1_000_003 + 1)  # its own stream: the base lines do not depend on it
    known = known_words(word)
    tokens = sorted(pieces) if pieces else None
    weights = [pieces[t] + 1 for t in tokens] if tokens else None
    made = 0
    while made < spec.madeup_words:
        w, parts = madeup_word(rng, tokens=tokens, weights=weights if made % 2 else None)
        if w in known or len(w) < 4 or w in word.lower() or len(parts) < 2:
            continue
        known.add(w)  # each made-up word once
        lines += madeup_lines(rng, w, parts, spec.lines_per_madeup)
        made += 1
    rng.shuffle(lines)
    return lines


def probe_prompts(word: str = KEYWORD) -> list[str]:
    """:data:`PROBE_PROMPTS` about ``word``."""
    return [p.format(word=word, Word=_cap(word)) for p in PROBE_PROMPTS]


def facts(word: str = KEYWORD) -> list[dict]:
    """The built-in association pairs for ``word`` (prompt, answer)."""
    return [{k: v.replace(KEYWORD, word).replace(KEYWORD.capitalize(), word.capitalize()) for k, v in f.items()}
            for f in FACTS]
