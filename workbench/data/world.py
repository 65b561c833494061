"""The built-in synthetic image-caption world: scenes, captions, near-miss captions and ground truth.

``build_world(WorldConfig(...))`` returns train/val/test :class:`Split` s, deterministic per seed. Each split
holds the scene description of every image, its rendered pixels, 5 captions per image (structured specs, text
and token ids), and vectorised ground truth (:func:`relevance_pairs`, :class:`SemanticRelation`).

Run ``python -m workbench world --help`` for a look at examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from workbench.checks import check_float, check_int
from workbench.data import grammar
from workbench.data.relations import ImageIdRelation, PairRelation, ids_to_index
from workbench.data.render import render_scene
from workbench.data.scene import COLOURS, GRID, SHAPES, SIZES, CaptionSpec, Mention, Obj, Scene, relation_holds

PERTURBATIONS = ("swap_colour", "swap_shape", "flip_relation", "change_attribute")
# For training the teacher: change_attribute split by attribute, so sizes (rarely named) get their share.
TRAINING_PERTURBATIONS = ("swap_colour", "swap_shape", "flip_relation", "change_colour", "change_shape", "change_size")
SPLITS = ("train", "val", "test")
MAX_OBJECTS = 3


@dataclass(frozen=True)
class WorldConfig:
    """Size and randomness of the built-in world. ``WorldConfig()`` is the default used everywhere."""

    seed: int = 0  # every split is a deterministic function of (seed, split name)
    n_train: int = 6000  # images per split; 5 captions each
    n_val: int = 500
    n_test: int = 1000
    captions_per_image: int = 5
    p_three_objects: float = 0.5  # else two objects
    # Caption kinds: relational, else conjunction / single object (half each). Non-relational captions are "safe"
    # choices for image->text retrieval (true whenever their objects exist), which lets a relation-blind dual
    # encoder reach ~100% semantic R@1 i2t; so by default every caption states a relation.
    p_relational: float = 1.0
    p_colour: float = 0.9  # chance a mention in a relational / conjunctive caption names its colour
    p_size: float = 0.4  # chance a mention names its size
    noise: float = 0.04  # pixel noise (std)

    def __post_init__(self) -> None:
        check_int("seed", self.seed, min_value=0)
        for name in ("n_train", "n_val", "n_test"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("captions_per_image", self.captions_per_image, min_value=1, max_value=20)
        for name in ("p_three_objects", "p_relational", "p_colour", "p_size"):
            check_float(name, getattr(self, name), min_value=0.0, max_value=1.0)
        check_float("noise", self.noise, min_value=0.0, max_value=0.5)

    def size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


# ----------------------------------------------------------------------------------------------- sampling


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
    """A true caption for ``scene``: relational, conjunctive or single-object (which always names a colour)."""
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


def sample_captions(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> list[tuple[CaptionSpec, str]]:
    """``captions_per_image`` distinct (spec, text) pairs, all true for the scene."""
    out: dict[str, CaptionSpec] = {}
    for _ in range(50 * cfg.captions_per_image):
        spec = sample_caption(scene, rng, cfg)
        out.setdefault(grammar.render(spec, rng), spec)
        if len(out) == cfg.captions_per_image:
            break
    return [(spec, text) for text, spec in out.items()]


# ----------------------------------------------------------------------------------------- near misses


def perturb(scene: Scene, spec: CaptionSpec, kind: str, rng: np.random.Generator) -> CaptionSpec | None:
    """A near-miss of ``spec`` that is false for ``scene``, or ``None`` if this kind cannot make one.

    Kinds: ``swap_colour`` / ``swap_shape`` between the two mentions (same words, wrong binding),
    ``flip_relation`` (arguments swapped: same words, wrong relation), ``change_attribute`` (one colour, shape or
    size replaced by another value); ``change_colour`` / ``change_shape`` / ``change_size`` force the attribute.
    """
    m = spec.mentions
    if kind == "swap_colour" and len(m) == 2 and None not in (m[0].colour, m[1].colour):
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
    return CaptionSpec(mentions, spec.relation)


# --------------------------------------------------------------------------------- tensors and truth


N_MENTIONS = len(SHAPES) * (len(COLOURS) + 1) * (len(SIZES) + 1)  # every (shape, colour|any, size|any)
N_RELATION_FACTS = 4 * N_MENTIONS * N_MENTIONS


def mention_id(shape: int, colour: int | None, size: int | None) -> int:
    """Index of a mention among the N_MENTIONS possible ones (``None`` = attribute left out)."""
    c = 0 if colour is None else colour + 1
    z = 0 if size is None else size + 1
    return (shape * (len(COLOURS) + 1) + c) * (len(SIZES) + 1) + z


def relation_fact_id(relation: int, m1: int, m2: int) -> int:
    return (relation * N_MENTIONS + m1) * N_MENTIONS + m2


def _object_mentions(o: Obj) -> list[int]:
    """The 4 mention ids true of one object (colour named or not, size named or not)."""
    return [mention_id(o.shape, c, z) for c in (None, o.colour) for z in (None, o.size)]


def scene_fact_tables(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every fact that holds in each scene: bool [N, N_MENTIONS] and bool [N, N_RELATION_FACTS]."""
    mentions = torch.zeros(len(scenes), N_MENTIONS, dtype=torch.bool)
    relations = torch.zeros(len(scenes), N_RELATION_FACTS, dtype=torch.bool)
    for i, scene in enumerate(scenes):
        for a in scene.objects:
            mentions[i, _object_mentions(a)] = True
            for b in scene.objects:
                for r in range(4):
                    if a is not b and relation_holds(r, a, b):
                        ids = [relation_fact_id(r, m1, m2) for m1 in _object_mentions(a) for m2 in _object_mentions(b)]
                        relations[i, ids] = True
    return mentions, relations


def caption_fact_ids(specs: list[CaptionSpec]) -> torch.Tensor:
    """long [M, 3]: (mention 1, mention 2 or -1, relation fact or -1) ids of each caption's facts."""
    out = torch.full((len(specs), 3), -1, dtype=torch.long)
    for i, spec in enumerate(specs):
        ids = [mention_id(m.shape, m.colour, m.size) for m in spec.mentions]
        out[i, : len(ids)] = torch.tensor(ids)
        if spec.relation is not None:
            out[i, 2] = relation_fact_id(spec.relation, ids[0], ids[1])
    return out


def count_true_facts(mention_rows: torch.Tensor, relation_rows: torch.Tensor, fact_ids: torch.Tensor) -> torch.Tensor:
    """How many facts hold, for scene fact-table rows and caption fact ids.

    Args:
        mention_rows: bool [q, N_MENTIONS]; relation_rows: bool [q, N_RELATION_FACTS] (rows of the scene tables).
        fact_ids: long [c, 3] caption fact ids (-1 = no such fact).

    Returns:
        long [q, c]: for every scene row and caption, the number of the caption's facts that hold.
    """
    has, ids = fact_ids >= 0, fact_ids.clamp(min=0)
    true = (mention_rows[:, ids[:, 0]] & has[:, 0]).long()
    true += mention_rows[:, ids[:, 1]] & has[:, 1]
    true += relation_rows[:, ids[:, 2]] & has[:, 2]
    return true


@dataclass
class Split:
    """One split of the world. Image ``i``'s captions are those ``c`` with ``caption_image[c] == i``.

    Attributes:
        name: "train" | "val" | "test".
        scenes: N scene descriptions; captions: M caption specs; texts: M strings.
        images: float [N, 3, 24, 24]; tokens: long [M, T]; caption_image: long [M].
        image_ids, caption_ids: long [N] / [M], ids unique across the world's splits (for score stores).
    """

    name: str
    scenes: list[Scene]
    captions: list[CaptionSpec]
    texts: list[str]
    images: torch.Tensor
    tokens: torch.Tensor
    caption_image: torch.Tensor
    image_ids: torch.Tensor
    caption_ids: torch.Tensor
    fact_ids: torch.Tensor = field(init=False)
    _tables: tuple[torch.Tensor, torch.Tensor] | None = field(init=False, default=None, repr=False)
    _grounding: tuple[torch.Tensor, ...] | None = field(init=False, default=None, repr=False)
    _layout: torch.Tensor | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.fact_ids = caption_fact_ids(self.captions)
        self.num_facts = (self.fact_ids >= 0).sum(-1)

    @property
    def fact_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(bool [N, N_MENTIONS], bool [N, N_RELATION_FACTS]): every fact that holds in each scene (built lazily)."""
        if self._tables is None:
            self._tables = scene_fact_tables(self.scenes)
        return self._tables

    @property
    def num_images(self) -> int:
        return len(self.scenes)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def true_facts_pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """long [P]: how many of caption ``cap[p]``'s facts hold in scene ``img[p]``."""
        m, r = self.fact_tables
        ids = self.fact_ids[cap]  # [P, 3]
        has, idc = ids >= 0, ids.clamp(min=0)
        true = (m[img, idc[:, 0]] & has[:, 0]).long() + (m[img, idc[:, 1]] & has[:, 1])
        return true + (r[img, idc[:, 2]] & has[:, 2])

    def true_facts_block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """long [q, c]: true-fact counts for all pairs of ``img`` [q] x ``cap`` [c]."""
        m, r = self.fact_tables
        return count_true_facts(m[img], r[img], self.fact_ids[cap])

    def relevance_pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """Graded relevance float [P] of aligned (image index, caption index) pairs."""
        return self.true_facts_pairs(img, cap).float() / self.num_facts[cap].float()

    def relevance_block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """Graded relevance float [q, c] for all pairs of ``img`` [q] x ``cap`` [c]."""
        return self.true_facts_block(img, cap).float() / self.num_facts[cap].float()

    def grounding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each caption's objects are in its own image (for the teacher's grounding auxiliary loss).

        Returns:
            (positions long [M, 2]: token index of each mention's shape word in written order, -1 if none;
             cells bool [M, 2, 9]: grid cells holding an object that matches that mention).
        """
        if self._grounding is None:
            self._grounding = _grounding_targets(self)
        return self._grounding

    def image_index(self, image_ids: torch.Tensor) -> torch.Tensor:
        """Global image ids long [P] -> split indices long [P]."""
        return ids_to_index(self.image_ids, image_ids, "image_ids", self.name)

    def caption_index(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """Global caption ids long [P] -> split indices long [P]."""
        return ids_to_index(self.caption_ids, caption_ids, "caption_ids", self.name)

    def layout(self) -> torch.Tensor:
        """long [M]: where each caption's 2nd mentioned object is relative to its 1st in its own image, as
        ``3 * (row sign + 1) + (column sign + 1)`` in 0..8; -1 when a mention matches several objects."""
        if self._layout is None:
            positions, cells = self.grounding()
            unique = (cells.sum(-1) == 1).all(-1) & (positions[:, 1] >= 0)
            cell = cells.float().argmax(-1)  # [M, 2]
            row, col = cell // GRID, cell % GRID
            code = 3 * (torch.sign(row[:, 1] - row[:, 0]) + 1) + torch.sign(col[:, 1] - col[:, 0]) + 1
            self._layout = torch.where(unique, code, torch.full_like(code, -1))
        return self._layout

    def relations(self) -> dict[str, PairRelation]:
        """The two evaluation protocols: {"semantic": true-for-image, "coco": written-for-image}."""
        return {"semantic": SemanticRelation(self), "coco": ImageIdRelation(self.caption_image, self.num_images)}


def _grounding_targets(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    positions = torch.full((split.num_captions, 2), -1, dtype=torch.long)
    cells = torch.zeros(split.num_captions, 2, GRID * GRID, dtype=torch.bool)
    shape_words = {w for options in grammar.SHAPE_WORDS.values() for w in options}
    for c, text in enumerate(split.texts):
        scene = split.scenes[int(split.caption_image[c])]
        where = [i + 1 for i, w in enumerate(text.split()) if w in shape_words]  # +1 for [CLS]
        for j, mention in enumerate(grammar.parse(text).mentions):
            positions[c, j] = where[j]
            for o in scene.objects:
                cells[c, j, o.row * GRID + o.col] |= mention.matches(o)
    return positions, cells


class SemanticRelation(PairRelation):
    """Ground truth: caption ``c`` matches image ``i`` iff every fact of ``c`` holds in scene ``i``."""

    def __init__(self, split: Split):
        self.split = split
        self.num_images, self.num_captions = split.num_images, split.num_captions

    def pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        img_c, cap_c = img.cpu(), cap.cpu()
        return (self.split.true_facts_pairs(img_c, cap_c) == self.split.num_facts[cap_c]).to(img.device)

    def block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        img_c, cap_c = img.cpu(), cap.cpu()
        return (self.split.true_facts_block(img_c, cap_c) == self.split.num_facts[cap_c][None]).to(img.device)


# ------------------------------------------------------------------------------------------ building


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), 0xC0DE]))


def build_split(cfg: WorldConfig, split: str, image_offset: int = 0, caption_offset: int = 0) -> Split:
    """Sample, caption and render one split; a deterministic function of ``(cfg, split)``."""
    rng = _split_rng(cfg.seed, split)
    scenes, captions, texts, owner = [], [], [], []
    for i in range(cfg.size(split)):
        scene = sample_scene(rng, cfg.p_three_objects)
        scenes.append(scene)
        for spec, text in sample_captions(scene, rng, cfg):
            captions.append(spec)
            texts.append(text)
            owner.append(i)
    images = torch.from_numpy(np.stack([render_scene(s, rng, noise=cfg.noise) for s in scenes]))
    return Split(
        name=split, scenes=scenes, captions=captions, texts=texts, images=images,
        tokens=grammar.tokenize(texts), caption_image=torch.tensor(owner, dtype=torch.long),
        image_ids=torch.arange(len(scenes)) + image_offset, caption_ids=torch.arange(len(texts)) + caption_offset,
    )


@dataclass
class World:
    """The three splits of one world, plus the config that made them."""

    config: WorldConfig
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def build_world(cfg: WorldConfig | None = None) -> World:
    """Build all splits. Image and caption ids are unique across splits (train first, then val, test)."""
    cfg = cfg or WorldConfig()
    splits, img_off, cap_off = {}, 0, 0
    for name in SPLITS:
        splits[name] = build_split(cfg, name, img_off, cap_off)
        img_off += splits[name].num_images
        cap_off += splits[name].num_captions
    return World(cfg, **splits)


# --------------------------------------------------------------------------------------- minimal pairs


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
    return MinimalPairs(torch.tensor(img, dtype=torch.long), torch.tensor(cap, dtype=torch.long),
                        grammar.tokenize(t_true), grammar.tokenize(t_false), kind, t_false)


