"""Near-miss captions: perturbations of a true caption that make it false for its image (swapped colours or shapes,
a flipped relation, one changed attribute), and the minimal pairs built from them (a true caption beside its
near-miss, for the same image) that measure binding and relations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from workbench.checks import check_int
from workbench.data import grammar
from workbench.data.scene import COLOURS, SHAPES, SIZES, CaptionSpec, Mention, Scene
from workbench.data.world import Split

PERTURBATIONS = ("swap_colour", "swap_shape", "flip_relation", "change_attribute")


TRAINING_PERTURBATIONS = ("swap_colour", "swap_shape", "flip_relation", "change_colour", "change_shape", "change_size")


def perturb(scene: Scene, spec: CaptionSpec, kind: str, rng: np.random.Generator) -> CaptionSpec | None:
    """A near-miss of ``spec`` that is false for ``scene``, or ``None`` if this kind cannot make one.

    Kinds: ``swap_colour`` / ``swap_shape`` between the two mentions (same words, wrong binding),
    ``flip_relation`` (arguments swapped: same words, wrong relation), ``change_attribute`` (one colour, shape or
    size replaced by another value); ``change_colour`` / ``change_shape`` / ``change_size`` force the attribute.
    """
    m = spec.mentions
    if spec.more_relations and kind in ("swap_colour", "swap_shape", "flip_relation"):
        new = _perturb_chain(spec, kind, rng)
        if new is None:
            return None
    elif kind == "swap_colour" and len(m) == 2 and None not in (m[0].colour, m[1].colour):
        new = CaptionSpec((Mention(m[0].shape, m[1].colour, m[0].size), Mention(m[1].shape, m[0].colour, m[1].size)),
                          spec.relation)
    elif kind == "swap_shape" and len(m) == 2:
        new = CaptionSpec((Mention(m[1].shape, m[0].colour, m[0].size), Mention(m[0].shape, m[1].colour, m[1].size)),
                          spec.relation)
    elif kind == "flip_relation" and spec.relation is not None:
        new = CaptionSpec(m[::-1], spec.relation)
    elif kind == "change_attribute":
        new = _change_attribute(spec, rng)
    elif kind.startswith("change_") and kind in TRAINING_PERTURBATIONS:
        new = _change_attribute(spec, rng, kind.removeprefix("change_"))
        if new is None:
            return None
    elif kind in PERTURBATIONS:
        return None
    else:
        raise ValueError(f"kind must be one of {PERTURBATIONS + TRAINING_PERTURBATIONS[3:]}, got {kind!r}")
    from workbench.data.scene import relevance

    return new if relevance(scene, new) < 1.0 else None


def _perturb_chain(spec: CaptionSpec, kind: str, rng: np.random.Generator) -> CaptionSpec | None:
    """Word-preserving perturbations of a chain: swap colours / shapes between two random mentions, or flip one
    random relation (swap the two mentions it links)."""
    m = list(spec.mentions)
    if kind == "flip_relation":
        k = int(rng.integers(len(m) - 1))
        m[k], m[k + 1] = m[k + 1], m[k]
        return CaptionSpec(tuple(m), spec.relation, spec.more_relations)
    i, j = sorted(int(x) for x in rng.choice(len(m), size=2, replace=False))
    if kind == "swap_colour":
        if m[i].colour is None or m[j].colour is None:
            return None
        m[i], m[j] = Mention(m[i].shape, m[j].colour, m[i].size), Mention(m[j].shape, m[i].colour, m[j].size)
    else:
        m[i], m[j] = Mention(m[j].shape, m[i].colour, m[i].size), Mention(m[i].shape, m[j].colour, m[j].size)
    return CaptionSpec(tuple(m), spec.relation, spec.more_relations)


def _change_attribute(spec: CaptionSpec, rng: np.random.Generator, attr: str | None = None) -> CaptionSpec | None:
    """Replace one attribute (``attr``, or a random named one) of one random mention; None if not named."""
    j = int(rng.integers(len(spec.mentions)))
    m = spec.mentions[j]
    options = ["shape"] + [a for a in ("colour", "size") if getattr(m, a) is not None]
    if attr is None:
        attr = options[rng.integers(len(options))]
    elif attr not in options:
        others = [i for i, x in enumerate(spec.mentions) if getattr(x, attr) is not None]
        if not others:
            return None
        j = others[int(rng.integers(len(others)))]
        m = spec.mentions[j]
    n_values = {"shape": len(SHAPES), "colour": len(COLOURS), "size": len(SIZES)}[attr]
    value = (getattr(m, attr) + 1 + int(rng.integers(n_values - 1))) % n_values
    new_m = Mention(**{**asdict(m), attr: value})
    mentions = tuple(new_m if i == j else x for i, x in enumerate(spec.mentions))
    return CaptionSpec(mentions, spec.relation, spec.more_relations)


@dataclass
class MinimalPairs:
    """Near-miss pairs for one split: image ``image[p]`` with its true caption and a false near-miss of it.

    Attributes:
        image: long [P] image indices; caption: long [P] indices of the true captions.
        tokens_true, tokens_false: long [P, T]; kind: list of P perturbation names; texts_false: P strings.
    """

    image: torch.Tensor
    caption: torch.Tensor
    tokens_true: torch.Tensor
    tokens_false: torch.Tensor
    kind: list[str]
    texts_false: list[str]


def minimal_pairs(
    split: Split, per_kind: int = 500, seed: int = 0, kinds: tuple[str, ...] = PERTURBATIONS
) -> MinimalPairs:
    """Up to ``per_kind`` near-miss pairs of each kind from the split's captions (deterministic per seed).

    The false caption is rendered with the same random draws as a re-rendering of the true one, so the two
    differ only where the perturbation differs (same template, same synonyms).
    """
    check_int("per_kind", per_kind, min_value=1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9A1]))
    rows: list[tuple[int, int, str, str, str]] = []
    for kind in kinds:
        found = 0
        for c in rng.permutation(split.num_captions):
            img = int(split.caption_image[c])
            new = perturb(split.scenes[img], split.captions[c], kind, rng)
            if new is None:
                continue
            draw = int(rng.integers(2**31))
            t_true = grammar.render(split.captions[c], np.random.default_rng(draw))
            t_false = grammar.render(new, np.random.default_rng(draw))
            rows.append((img, int(c), kind, t_true, t_false))
            found += 1
            if found == per_kind:
                break
    img, cap, kind, t_true, t_false = (list(x) for x in zip(*rows, strict=True)) if rows else ([],) * 5
    width = grammar.token_width(t_true + t_false)
    return MinimalPairs(torch.tensor(img, dtype=torch.long), torch.tensor(cap, dtype=torch.long),
                        grammar.tokenize(t_true, width), grammar.tokenize(t_false, width), kind, t_false)
