"""The caption grammar: structured ``CaptionSpec`` <-> text, with synonyms, both argument orders and templates.

Text is rendered from a caption's meaning (never the other way round), and :func:`parse` inverts the grammar,
so a test can check that every sentence says exactly what its spec claims.

    relational:   "a small red square left of a blue circle" / "a blue circle is to the right of a small red square"
    conjunction:  "there is a red square and a blue ball"
    single:       "a large yellow triangle"
    chain:        "a small red square left of a big blue circle above a big green cross" (each relation links the
                  mentions on either side of it; also said backwards: "... cross below a ... circle right of a ...")

Chains are longer than :data:`MAX_WORDS`; tokenize them with ``max_len=token_width(texts)``.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.data.scene import COLOURS, INVERSE, RELATIONS, SHAPES, SIZES, CaptionSpec, Mention

SHAPE_WORDS = {0: ("square", "box"), 1: ("circle", "ball"), 2: ("triangle",), 3: ("cross", "plus")}
COLOUR_WORDS = {i: (c,) for i, c in enumerate(COLOURS)} | {COLOURS.index("purple"): ("purple", "violet")}
SIZE_WORDS = {0: ("small", "little"), 1: ("big", "large")}
RELATION_WORDS = {
    0: ("left of", "to the left of"),
    1: ("right of", "to the right of"),
    2: ("above", "over"),
    3: ("below", "under"),
}
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
PAD, CLS, SEP, MASK = range(4)
MAX_WORDS = 15


def _vocabulary() -> tuple[str, ...]:
    words = ["a", "is", "there", "and"]
    for table in (SIZE_WORDS, COLOUR_WORDS, SHAPE_WORDS, RELATION_WORDS):
        for options in table.values():
            words += [w for phrase in options for w in phrase.split()]
    return SPECIALS + tuple(dict.fromkeys(words))


VOCAB = _vocabulary()
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
assert len(SHAPE_WORDS) == len(SHAPES) and len(SIZE_WORDS) == len(SIZES) and len(RELATION_WORDS) == len(RELATIONS)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def render_mention(m: Mention, rng: np.random.Generator) -> str:
    words = ["a"]
    if m.size is not None:
        words.append(_pick(rng, SIZE_WORDS[m.size]))
    if m.colour is not None:
        words.append(_pick(rng, COLOUR_WORDS[m.colour]))
    words.append(_pick(rng, SHAPE_WORDS[m.shape]))
    return " ".join(words)


def render(spec: CaptionSpec, rng: np.random.Generator, swap_order: bool | None = None) -> str:
    """Text for ``spec``; a relational caption is said in either argument order ("A left of B" / "B right of A")."""
    prefix = "there is " if rng.random() < 0.3 else ""
    mentions, relation = spec.mentions, spec.relation
    if len(mentions) == 1:
        return prefix + render_mention(mentions[0], rng)
    if swap_order is None:
        swap_order = bool(rng.random() < 0.5)
    if spec.more_relations:
        return prefix + _render_chain(spec, rng, swap_order, verb=not prefix)
    if swap_order:
        mentions = mentions[::-1]
        relation = None if relation is None else INVERSE[relation]
    first, second = (render_mention(m, rng) for m in mentions)
    if relation is None:
        return f"{prefix}{first} and {second}"
    verb = "is " if not prefix and rng.random() < 0.4 else ""
    return f"{prefix}{first} {verb}{_pick(rng, RELATION_WORDS[relation])} {second}"


def _render_chain(spec: CaptionSpec, rng: np.random.Generator, backwards: bool, verb: bool) -> str:
    mentions, relations = list(spec.mentions), [spec.relation, *spec.more_relations]
    if backwards:
        mentions, relations = mentions[::-1], [INVERSE[r] for r in relations[::-1]]
    words = [render_mention(mentions[0], rng)]
    if verb and rng.random() < 0.4:
        words.append("is")
    for relation, mention in zip(relations, mentions[1:], strict=True):
        words += [_pick(rng, RELATION_WORDS[relation]), render_mention(mention, rng)]
    return " ".join(words)


def reverse_chain(spec: CaptionSpec) -> CaptionSpec:
    """The same chain read backwards (same meaning): mentions reversed, each relation inverted."""
    relations = [INVERSE[r] for r in (spec.relation, *spec.more_relations)[::-1]]
    return CaptionSpec(spec.mentions[::-1], relations[0], tuple(relations[1:]))


def token_width(texts: list[str]) -> int:
    """Token columns for ``texts``: ``MAX_WORDS + 1`` (today's width) unless a text is longer (chains)."""
    return max([MAX_WORDS + 1] + [len(t.split()) + 1 for t in texts])


def canonical(spec: CaptionSpec) -> CaptionSpec:
    """The same meaning in one normal form: the relation written as "left of"/"above" (arguments swapped if
    needed), and the two mentions of a conjunction ("A and B" = "B and A") in a fixed order."""
    if spec.more_relations:  # a chain reads both ways: keep the direction with the smaller relation sequence
        back = reverse_chain(spec)
        return back if (back.relation, *back.more_relations) < (spec.relation, *spec.more_relations) else spec
    if spec.relation in (1, 3):
        return CaptionSpec(spec.mentions[::-1], INVERSE[spec.relation])
    if spec.relation is None and len(spec.mentions) == 2:
        key = lambda m: (m.shape, -1 if m.colour is None else m.colour, -1 if m.size is None else m.size)  # noqa: E731
        return CaptionSpec(tuple(sorted(spec.mentions, key=key)))
    return spec


def _lookup(table: dict[int, tuple[str, ...]]) -> dict[str, int]:
    return {w: k for k, options in table.items() for w in options}


_SIZE, _COLOUR, _SHAPE = _lookup(SIZE_WORDS), _lookup(COLOUR_WORDS), _lookup(SHAPE_WORDS)
_RELATION = _lookup(RELATION_WORDS)


def _parse_mention(words: list[str]) -> tuple[Mention, list[str]]:
    if not words or words[0] != "a":
        raise ValueError(f"expected a mention starting with 'a', got {' '.join(words)!r}")
    words = words[1:]
    size = _SIZE.get(words[0]) if words else None
    words = words[1:] if size is not None else words
    colour = _COLOUR.get(words[0]) if words else None
    words = words[1:] if colour is not None else words
    if not words or words[0] not in _SHAPE:
        raise ValueError(f"expected a shape word, got {' '.join(words)!r}")
    return Mention(_SHAPE[words[0]], colour, size), words[1:]


def parse(text: str) -> CaptionSpec:
    """Invert :func:`render`: the caption's meaning (in the argument order written)."""
    words = text.split()
    if words[:2] == ["there", "is"]:
        words = words[2:]
    first, rest = _parse_mention(words)
    if not rest:
        return CaptionSpec((first,))
    if rest[0] == "and":
        second, tail = _parse_mention(rest[1:])
        relation = None
    else:
        rest = rest[1:] if rest[0] == "is" else rest
        mentions, relations, tail = [first], [], rest
        while tail:  # one relation phrase and one mention per round (more than one round: a chain)
            cut = tail.index("a") if "a" in tail else len(tail)
            phrase = " ".join(tail[:cut])
            if phrase not in _RELATION:
                if relations:
                    break
                raise ValueError(f"unknown relation phrase {phrase!r} in {text!r}")
            relations.append(_RELATION[phrase])
            mention, tail = _parse_mention(tail[cut:])
            mentions.append(mention)
        if tail:
            raise ValueError(f"unexpected words {' '.join(tail)!r} at the end of {text!r}")
        return CaptionSpec(tuple(mentions), relations[0], tuple(relations[1:]))
    if tail:
        raise ValueError(f"unexpected words {' '.join(tail)!r} at the end of {text!r}")
    return CaptionSpec((first, second), relation)


def tokenize(texts: list[str], max_len: int = MAX_WORDS + 1) -> torch.Tensor:
    """Word ids, ``[CLS]`` first, padded with ``[PAD]``: long [M, max_len]."""
    out = torch.full((len(texts), max_len), PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        unknown = [w for w in text.split() if w not in WORD_ID]
        if unknown:
            raise ValueError(f"caption {text!r} has word(s) {unknown} that are not in the vocabulary")
        ids = [CLS] + [WORD_ID[w] for w in text.split()]
        if len(ids) > max_len:
            raise ValueError(f"caption {text!r} has {len(ids) - 1} words; max_len={max_len} allows {max_len - 1}")
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def detokenize(ids: torch.Tensor) -> str:
    """Inverse of :func:`tokenize` for one row (specials dropped)."""
    return " ".join(VOCAB[i] for i in ids.tolist() if i >= len(SPECIALS))
