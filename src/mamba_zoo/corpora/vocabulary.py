"""Built-in word lists and a small sentence grammar for the synthetic corpora.

All words are lowercase ASCII letters, so a character vocabulary of ``a-z``, space and apostrophe covers
every transcript.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COMMANDS",
    "DIGITS",
    "NUMBER_WORDS",
    "SPEECH_COMMANDS_AUXILIARY",
    "UNKNOWN_WORDS",
    "digit_string",
    "fact_answer_span",
    "fact_book",
    "make_fact",
    "make_sentence",
    "sentence_words",
]

# The ten command words of Speech Commands v2's 12-class task, in the dataset's label order.
COMMANDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
DIGITS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The other words of Speech Commands v2 (besides commands and digits).
SPEECH_COMMANDS_AUXILIARY: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "backward", "forward", "follow", "learn", "visual",
)
# Words spoken as `_unknown_`: the auxiliary words and more, none sounding like a command or a digit
# (no "know", "write", "of", "to", "for", "ate", "top", "light", ...).
UNKNOWN_WORDS: tuple[str, ...] = SPEECH_COMMANDS_AUXILIARY + (
    "apple", "water", "table", "garden", "music", "yellow", "purple", "river", "mountain",
    "paper", "coffee", "orange", "pencil", "rabbit", "kitchen", "summer", "winter", "monkey", "tiger",
    "silver", "basket", "jungle", "camera", "doctor", "lemon", "planet", "rocket", "candle", "guitar",
    "island", "bottle", "hammer", "ladder", "pillow", "carpet", "button", "dinner", "bridge", "cloud",
    "fish", "milk", "bread", "chair", "green", "smile", "train", "horse", "mouse", "boat",
    "book", "wall", "fire", "snow", "rain", "wind", "pretty", "under", "very", "window",
)
NUMBER_WORDS: tuple[str, ...] = DIGITS + (
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)

NAMES = ("alice", "bob", "carol", "daniel", "emma", "frank", "grace", "henry", "julia", "oscar", "maria", "peter")
NOUNS = (
    "cat", "dog", "bird", "horse", "house", "tree", "car", "book", "table", "window", "garden", "river",
    "teacher", "doctor", "farmer", "child", "boat", "letter", "apple", "bottle", "chair", "door", "road",
    "ship", "train", "flower", "cup", "box", "key", "lamp",
)
ADJECTIVES = (
    "big", "small", "red", "green", "blue", "old", "new", "happy", "quiet", "little", "heavy", "bright",
    "cold", "warm", "dark", "tall", "young", "empty",
)
TRANSITIVE_VERBS = (
    "saw", "found", "took", "painted", "moved", "opened", "closed", "carried", "cleaned", "liked", "watched",
    "bought", "sold", "washed", "held",
)
INTRANSITIVE_VERBS = ("slept", "ran", "walked", "laughed", "waited", "sang", "jumped", "stopped", "worked", "smiled")
PREPOSITIONS = ("near", "under", "behind", "beside", "over", "inside", "past")
ADVERBS = ("quickly", "slowly", "quietly", "again", "today", "yesterday", "outside", "early")


def sentence_words(words: tuple[str, ...] | list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """The word classes of the grammar. ``words`` (optional) replaces the noun list."""
    nouns = NOUNS if words is None else tuple(words)
    return {
        "name": NAMES, "noun": nouns, "adj": ADJECTIVES, "vt": TRANSITIVE_VERBS, "vi": INTRANSITIVE_VERBS,
        "prep": PREPOSITIONS, "adv": ADVERBS,
    }


_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("the {adj} {noun} {vi} {adv}", "."),
    ("{name} {vt} the {noun}", "."),
    ("the {noun} {vi} {prep} the {noun}", "."),
    ("{name} and {name} {vt} a {adj} {noun}", "."),
    ("the {noun} is {adj}", "."),
    ("{name} {vi} {prep} the {adj} {noun}", "."),
    ("where is the {adj} {noun}", "?"),
    ("did {name} see the {noun}", "?"),
    ("a {adj} {noun} {vt} the {noun} {adv}", "."),
    ("{name} {vt} a {noun} {prep} the {noun}", "."),
)


def make_sentence(rng: np.random.Generator, words: tuple[str, ...] | list[str] | None = None) -> tuple[str, str]:
    """Draw one sentence from the grammar: returns ``(text, final_punctuation)``; text is lowercase words.

    ``words`` replaces the noun list (an empty list raises ValueError).
    """
    if words is not None and len(words) == 0:
        raise ValueError("The word list is empty; pass at least one word or words=None for the built-in list.")
    classes = sentence_words(words)
    template, punctuation = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    out = []
    for token in template.split():
        if token.startswith("{"):
            choices = classes[token.strip("{}")]
            out.append(choices[rng.integers(len(choices))])
        else:
            out.append(token)
    return " ".join(out), punctuation


_FACT_TEMPLATES: tuple[str, ...] = (
    "the {entity} lives near the {home}.",
    "the {entity} is {adj}.",
    "{owner} owns the {entity}.",
)


def fact_book(rng: np.random.Generator, words: tuple[str, ...] | list[str] | None = None) -> tuple[tuple[str, dict], ...]:
    """Fixed facts about every entity (``words``, default the grammar's nouns): a home (a built-in noun), an
    adjective and an owner (a name), drawn once. Returns ``((entity, {"home": ..., "adj": ..., "owner": ...}), ...)``
    in the order of ``words``."""
    entities = NOUNS if words is None else tuple(words)
    if len(entities) == 0:
        raise ValueError("The word list is empty; pass at least one word or words=None for the built-in list.")
    return tuple(
        (entity, {"home": NOUNS[rng.integers(len(NOUNS))], "adj": ADJECTIVES[rng.integers(len(ADJECTIVES))],
                  "owner": NAMES[rng.integers(len(NAMES))]})
        for entity in entities
    )


def make_fact(rng: np.random.Generator, book: tuple[tuple[str, dict], ...]) -> str:
    """One statement of a fact from a :func:`fact_book`, e.g. ``"the vabonu lives near the river."``: the entity
    and the relation are random, the answer is fixed by the book, so it is predictable only by memorising it."""
    entity, facts = book[rng.integers(len(book))]
    template = _FACT_TEMPLATES[rng.integers(len(_FACT_TEMPLATES))]
    return template.format(entity=entity, **facts)


def fact_answer_span(text: str) -> tuple[int, int] | None:
    """Character span ``(start, end)`` of the memorised answer in a :func:`make_fact` statement: the home of
    ``"the X lives near the HOME."`` or the adjective of ``"the X is ADJ."``. ``None`` for ``"OWNER owns the X."``,
    whose fact (the owner) comes before the entity it belongs to, so it cannot be recalled."""
    if not text.endswith(".") or " owns the " in text:
        return None
    start = text.rindex(" ") + 1
    return start, len(text) - 1


def digit_string(rng: np.random.Generator, min_digits: int = 1, max_digits: int = 7) -> str:
    """Digits spoken as words, e.g. ``"three one four"``; its length is uniform in ``[min_digits, max_digits]``."""
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"Need 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}.")
    count = int(rng.integers(min_digits, max_digits + 1))
    return " ".join(DIGITS[i] for i in rng.integers(0, 10, size=count))
