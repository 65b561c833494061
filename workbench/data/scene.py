"""Scenes and captions of the built-in world as plain data, with their facts and graded relevance.

A scene is 2-3 objects on a 3x3 grid; each object has a shape, a colour and a size and sits in one cell.
A caption is a structured claim about a scene (1-2 object *mentions* and at most one spatial relation, or a
*chain* of 3+ mentions with a relation between each consecutive pair); its *facts* are one per mention ("there is
a [size] [colour] shape") plus one per relation ("there is a <mention i> REL a <mention i+1>"). Attributes left
out of a mention (partial descriptions) match anything.

``relevance(scene, caption)`` is the fraction of the caption's facts that hold in the scene: 1.0 means the
caption is true for the image, whichever image it was written for.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES = ("small", "big")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {0: 1, 1: 0, 2: 3, 3: 2}
GRID = 3


@dataclass(frozen=True)
class Obj:
    """One object: attribute indices into SHAPES/COLOURS/SIZES and its grid cell (row 0 = top, col 0 = left)."""

    shape: int
    colour: int
    size: int
    row: int
    col: int

    def describe(self) -> str:
        return f"{SIZES[self.size]} {COLOURS[self.colour]} {SHAPES[self.shape]} at ({self.row}, {self.col})"


@dataclass(frozen=True)
class Scene:
    """2-3 objects in distinct cells, with distinct (shape, colour) combinations."""

    objects: tuple[Obj, ...]

    def describe(self) -> str:
        return "; ".join(o.describe() for o in self.objects)


@dataclass(frozen=True)
class Mention:
    """An object description; ``None`` attributes were left out (they match anything). Shape is always given."""

    shape: int
    colour: int | None = None
    size: int | None = None

    def matches(self, obj: Obj) -> bool:
        return (
            obj.shape == self.shape
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
        )


@dataclass(frozen=True)
class CaptionSpec:
    """A caption's meaning: one or two mentions and an optional relation between them (index into RELATIONS).

    With a relation the caption claims ``mentions[0] RELATION mentions[1]``; with two mentions and no relation it
    claims both objects exist ("a red square and a blue circle").
    """

    mentions: tuple[Mention, ...]
    relation: int | None = None
    # a chain "m0 R0 m1 R1 m2 ...": more_relations[k] links mentions k+1 and k+2 (``relation`` links 0 and 1)
    more_relations: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.more_relations:
            if self.relation is None or len(self.mentions) != 2 + len(self.more_relations):
                raise ValueError(f"a chain of {len(self.more_relations) + 1} relations needs a first relation and "
                                 f"{len(self.more_relations) + 2} mentions, got {len(self.mentions)}")
            return
        if not 1 <= len(self.mentions) <= 2:
            raise ValueError(f"a caption has 1 or 2 mentions, got {len(self.mentions)}")
        if self.relation is not None and len(self.mentions) != 2:
            raise ValueError("a relation needs exactly 2 mentions")

    @property
    def relations(self) -> tuple[tuple[int, int, int], ...]:
        """Every relation fact as (first mention index, second mention index, relation)."""
        if self.relation is None:
            return ()
        return tuple((k, k + 1, r) for k, r in enumerate((self.relation, *self.more_relations)))

    @property
    def num_facts(self) -> int:
        return len(self.mentions) + len(self.relations)


def relation_holds(relation: int, a: Obj, b: Obj) -> bool:
    """Whether ``a RELATION b`` holds: left of = smaller column, above = smaller row."""
    return [a.col < b.col, a.col > b.col, a.row < b.row, a.row > b.row][relation]


def facts(scene: Scene, caption: CaptionSpec) -> list[bool]:
    """Truth of each of the caption's facts in the scene: one per mention, then one per relation (if any)."""
    out = [any(m.matches(o) for o in scene.objects) for m in caption.mentions]
    for i, j, relation in caption.relations:
        m1, m2 = caption.mentions[i], caption.mentions[j]
        out.append(
            any(
                m1.matches(a) and m2.matches(b) and relation_holds(relation, a, b)
                for a in scene.objects
                for b in scene.objects
                if a is not b
            )
        )
    return out


def relevance(scene: Scene, caption: CaptionSpec) -> float:
    """Fraction of the caption's facts that hold in the scene, in [0, 1]."""
    truth = facts(scene, caption)
    return sum(truth) / len(truth)
