"""The caption grammar: synonyms and both argument orders, parse inverting render, canonical forms, the
vocabulary, tokenize/detokenize round trips and clear errors for captions that do not fit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from workbench.data import grammar
from workbench.data.grammar import (
    CLS,
    COLOUR_WORDS,
    MAX_WORDS,
    PAD,
    RELATION_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    SPECIALS,
    VOCAB,
    canonical,
    detokenize,
    parse,
    render,
    tokenize,
)
from workbench.data.scene import INVERSE, CaptionSpec, Mention

FULL = CaptionSpec((Mention(0, 4, 0), Mention(3, 4, 1)), relation=0)  # small purple square left of a big purple cross


def renders(spec: CaptionSpec, n: int = 300, **kwargs) -> list[str]:
    rng = np.random.default_rng(0)
    return [render(spec, rng, **kwargs) for _ in range(n)]


def relation_phrase(text: str) -> str:
    """The words between the first mention's shape word (and an optional "is") and the second mention's "a"."""
    words = text.split()
    start = next(i for i, w in enumerate(words) if w in grammar._SHAPE) + 1
    start += words[start] == "is"
    return " ".join(words[start : words.index("a", start)])


def test_every_synonym_and_template_appears():
    texts = renders(FULL) + renders(CaptionSpec((Mention(1, 0, 1), Mention(2, 1, 0)), relation=2))
    words = {w for t in texts for w in t.split()}
    assert {"purple", "violet", "square", "box", "cross", "plus", "small", "little", "big", "large", "circle", "ball",
            "red", "green", "triangle"} <= words
    assert {relation_phrase(t) for t in texts} == {p for options in RELATION_WORDS.values() for p in options}
    assert any(t.startswith("there is ") for t in texts)
    assert any(" is " in t and not t.startswith("there") for t in texts)


def test_both_argument_orders_appear_and_mean_the_same():
    texts = renders(FULL)
    parsed = {parse(t) for t in texts}
    assert {p.relation for p in parsed} == {0, 1}  # "A left of B" and "B right of A"
    assert {canonical(p) for p in parsed} == {FULL}
    swapped = parse(render(FULL, np.random.default_rng(0), swap_order=True))
    assert swapped.mentions == FULL.mentions[::-1] and swapped.relation == INVERSE[FULL.relation]
    assert parse(render(FULL, np.random.default_rng(0), swap_order=False)) == FULL


@pytest.mark.parametrize(
    "spec",
    [CaptionSpec((Mention(2, 3),)), CaptionSpec((Mention(1, None, 1),)),
     CaptionSpec((Mention(0, 1, None), Mention(1, None, None))),
     *[CaptionSpec((Mention(0, 1, 0), Mention(3, None, 1)), relation=r) for r in range(4)]],
)
def test_parse_inverts_render(spec):
    for text in renders(spec, n=60):
        assert canonical(parse(text)) == canonical(spec), text


def test_canonical_writes_left_of_and_above():
    for r in range(4):
        spec = CaptionSpec((Mention(0, 1), Mention(1, 2)), relation=r)
        c = canonical(spec)
        assert c.relation in (0, 2) and canonical(c) == c
        assert c == (spec if r in (0, 2) else CaptionSpec(spec.mentions[::-1], INVERSE[r]))
    single = CaptionSpec((Mention(0, 1),))
    assert canonical(single) == single
    ab, ba = CaptionSpec((Mention(0, 1), Mention(0, None, 1))), CaptionSpec((Mention(0, None, 1), Mention(0, 1)))
    assert canonical(ab) == canonical(ba) and set(canonical(ab).mentions) == set(ab.mentions)
    assert canonical(ab) != canonical(CaptionSpec((Mention(0, 1), Mention(0, None, 0))))


def test_parse_on_hand_written_sentences():
    assert parse("there is a little violet plus under a box") == CaptionSpec((Mention(3, 4, 0), Mention(0)), 3)
    want = CaptionSpec((Mention(1, None, 1), Mention(2, 5)), 1)
    assert parse("a large ball is to the right of a cyan triangle") == want
    assert parse("a red square and a big blue circle") == CaptionSpec((Mention(0, 0), Mention(1, 2, 1)))
    assert parse("a yellow cross") == CaptionSpec((Mention(3, 3),))


@pytest.mark.parametrize(
    "text, message",
    [("red square", "starting with 'a'"), ("a red", "expected a shape word"),
     ("a red square beside a circle", "unknown relation phrase 'beside'"),
     ("a red square left of a blue circle today", "unexpected words 'today'"), ("", "starting with 'a'")],
)
def test_parse_rejects_what_the_grammar_cannot_say(text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_vocabulary_holds_every_word_once_after_the_specials():
    assert VOCAB[: len(SPECIALS)] == SPECIALS and len(set(VOCAB)) == len(VOCAB)
    for table in (SIZE_WORDS, COLOUR_WORDS, SHAPE_WORDS, RELATION_WORDS):
        for options in table.values():
            assert all(w in VOCAB for phrase in options for w in phrase.split())
    assert {"a", "is", "there", "and"} <= set(VOCAB)


def test_tokenize_detokenize_round_trip(tiny_world):
    texts = tiny_world.val.texts
    tokens = tokenize(texts)
    assert tokens.shape == (len(texts), MAX_WORDS + 1) and tokens.dtype == torch.long
    assert (tokens[:, 0] == CLS).all()
    for text, row in zip(texts, tokens, strict=True):
        n = len(text.split())
        assert (row[1 : n + 1] >= len(SPECIALS)).all() and (row[n + 1 :] == PAD).all()
        assert detokenize(row) == text
    assert torch.equal(tiny_world.val.tokens, tokens)


def test_longest_caption_the_grammar_can_say_fits():
    longest = lambda table: max((p for options in table.values() for p in options), key=lambda p: len(p.split()))  # noqa: E731
    mention = f"a {longest(SIZE_WORDS)} {longest(COLOUR_WORDS)} {longest(SHAPE_WORDS)}"
    for text in (f"there is {mention} {longest(RELATION_WORDS)} {mention}", f"{mention} is {longest(RELATION_WORDS)} "
                 f"{mention}", f"there is {mention} and {mention}"):
        assert len(text.split()) <= MAX_WORDS
        assert detokenize(tokenize([text])[0]) == text and parse(text)
    lengths = [len(t.split()) for spec in (FULL,) for t in renders(spec, n=200)]
    assert max(lengths) <= MAX_WORDS


def test_too_long_caption_errors_with_its_length():
    text = "a " + "big " * 15 + "square"
    with pytest.raises(ValueError, match=r"has 17 words; max_len=16 allows 15"):
        tokenize([text])
    with pytest.raises(ValueError, match=r"has 3 words; max_len=3 allows 2"):
        tokenize(["a red square"], max_len=3)
    assert tokenize(["a red square"], max_len=4).shape == (1, 4)


def test_unknown_word_errors_name_it():
    with pytest.raises(ValueError, match=r"'dog'.*not in the vocabulary"):
        tokenize(["a red square", "a big dog"])


def test_render_covers_all_specs_of_a_small_grid():
    """Every (shape, colour|None, size|None) mention and relation renders into words the grammar parses back."""
    for shape, colour, size in itertools.product(range(4), (None, 0, 4), (None, 1)):
        m = Mention(shape, colour, size)
        for spec in (CaptionSpec((m,)), CaptionSpec((m, Mention(1)), relation=shape), CaptionSpec((Mention(2), m))):
            for text in renders(spec, n=8):
                assert canonical(parse(text)) == canonical(spec)
                assert len(grammar.tokenize([text])[0].nonzero()) == len(text.split()) + 1


def test_world_captions_use_synonyms_templates_and_both_orders(tiny_world):
    texts = tiny_world.train.texts
    words = {w for t in texts for w in t.split()}
    assert {"box", "ball", "plus", "violet", "little", "large", "square", "circle", "cross", "purple"} <= words
    assert {parse(t).relation for t in texts} == {0, 1, 2, 3}  # every relation word, i.e. both argument orders
    assert {relation_phrase(t) for t in texts} == {p for options in RELATION_WORDS.values() for p in options}
    assert any(t.startswith("there is ") for t in texts)
    assert any(" is " in t and not t.startswith("there") for t in texts)  # "A is left of B"
