"""Sampling the built-in world: scenes (2-3 objects on the grid), contrast groups (the same objects in other
arrangements) and true captions of a scene (pair or chain style), as structured specs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from workbench.data import grammar
from workbench.data.scene import COLOURS, GRID, SHAPES, SIZES, CaptionSpec, Mention, Obj, Scene, relation_holds

if TYPE_CHECKING:
    from workbench.data.world import WorldConfig


def sample_scene(rng: np.random.Generator, p_three: float = 0.5) -> Scene:
    """2-3 objects in distinct cells with distinct (shape, colour) pairs."""
    n = 3 if rng.random() < p_three else 2
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    kinds = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)
    objs = tuple(
        Obj(int(k) // len(COLOURS), int(k) % len(COLOURS), int(rng.integers(len(SIZES))), int(c) // GRID, int(c) % GRID)
        for k, c in zip(kinds, cells, strict=True)
    )
    return Scene(objs)


def describe(obj: Obj, rng: np.random.Generator, p_colour: float, p_size: float) -> Mention:
    """A (possibly partial) true description of ``obj``: the shape always, colour and size by chance."""
    colour = obj.colour if rng.random() < p_colour else None
    size = obj.size if rng.random() < p_size else None
    return Mention(obj.shape, colour, size)


def sample_caption(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> CaptionSpec:
    """A true caption for ``scene``: relational, conjunctive or single-object (which always names a colour); with
    ``caption_style="chain"``, every object in a random order, each consecutive pair linked by a true relation."""
    if cfg.caption_style == "chain":
        return _sample_chain(scene, rng, cfg)
    u = rng.random()
    a, b = (scene.objects[i] for i in rng.choice(len(scene.objects), size=2, replace=False))
    if u < cfg.p_relational:
        holding = [r for r in range(4) if relation_holds(r, a, b)]
        relation = holding[rng.integers(len(holding))]
        return CaptionSpec((describe(a, rng, cfg.p_colour, cfg.p_size), describe(b, rng, cfg.p_colour, cfg.p_size)),
                           relation)
    if u < cfg.p_relational + (1 - cfg.p_relational) / 2:
        return CaptionSpec((describe(a, rng, cfg.p_colour, cfg.p_size), describe(b, rng, cfg.p_colour, cfg.p_size)))
    return CaptionSpec((describe(a, rng, 1.0, cfg.p_size),))


def _sample_chain(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> CaptionSpec:
    order = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    relations = []
    for a, b in zip(order, order[1:], strict=False):
        holding = [r for r in range(4) if relation_holds(r, a, b)]
        relations.append(holding[rng.integers(len(holding))])
    mentions = tuple(describe(o, rng, cfg.p_colour, cfg.p_size) for o in order)
    return CaptionSpec(mentions, relations[0], tuple(relations[1:]))


def sample_captions(scene: Scene, rng: np.random.Generator, cfg: WorldConfig,
                    siblings: tuple[Scene, ...] = ()) -> list[tuple[CaptionSpec, str]]:
    """``captions_per_image`` distinct (spec, text) pairs, all true for the scene.

    With ``cfg.discriminative``, only captions false for every scene in ``siblings`` are kept; if none is found,
    the image keeps the true captions that are true for the fewest siblings (so that it has at least one).
    """
    out: dict[str, CaptionSpec] = {}
    fallback: dict[str, tuple[int, CaptionSpec]] = {}
    for _ in range(50 * cfg.captions_per_image):
        spec = sample_caption(scene, rng, cfg)
        text = grammar.render(spec, rng)
        if cfg.discriminative and siblings:
            from workbench.data.scene import relevance

            fooled = sum(relevance(other, spec) == 1.0 for other in siblings)
            if fooled:
                fallback.setdefault(text, (fooled, spec))
                continue
        out.setdefault(text, spec)
        if len(out) == cfg.captions_per_image:
            break
    if not out:
        fewest = min(n for n, _ in fallback.values())
        out = {t: spec for t, (n, spec) in fallback.items() if n == fewest}
        out = dict(list(out.items())[: cfg.captions_per_image])
    return [(spec, text) for text, spec in out.items()]


def layout_key(scene: Scene) -> frozenset:
    """Every relation that holds, as (object index, object index, relation): what captions can claim."""
    objs = scene.objects
    return frozenset((i, j, r) for i, a in enumerate(objs) for j, b in enumerate(objs) if a is not b
                     for r in range(4) if relation_holds(r, a, b))


def sample_group(rng: np.random.Generator, cfg: WorldConfig) -> list[Scene]:
    """A contrast group: one sampled scene, then ``group_size - 1`` rearrangements of the same objects (same
    shapes, colours, sizes; other cells). Every two members differ both ways: each has a relation the other
    lacks, so each can get a caption that is false for the other (relations are only ever claimed, not denied)."""
    first = sample_scene(rng, cfg.p_three_objects)
    scenes, keys = [first], [layout_key(first)]
    n = len(first.objects)
    for _ in range(100 * cfg.group_size):
        if len(scenes) == cfg.group_size:
            break
        cells = rng.choice(GRID * GRID, size=n, replace=False)
        cand = Scene(tuple(replace(o, row=int(c) // GRID, col=int(c) % GRID)
                           for o, c in zip(first.objects, cells, strict=True)))
        key = layout_key(cand)
        if all(not key <= k and not k <= key for k in keys):
            scenes.append(cand)
            keys.append(key)
    return scenes
