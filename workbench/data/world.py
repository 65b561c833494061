"""The built-in synthetic image-caption world: scenes, captions, near-miss captions and ground truth.

``build_world(WorldConfig(...))`` returns train/val/test :class:`Split` s, deterministic per seed. Each split
holds the scene description of every image, its rendered pixels, 5 captions per image (structured specs, text
and token ids), and vectorised ground truth (:func:`relevance_pairs`, :class:`SemanticRelation`).

Named worlds live in :data:`WORLD_PRESETS`: ``"ambiguous-v1"`` is today's world (``WorldConfig()``: partial
two-object captions, each true for a median of ~11 other training images); ``"contrast-chain-v1"`` has specific
captions (every object of a 3-object scene named with colour and size, chained by two relations) and *contrast
groups* (3 images share one object set in different arrangements; a caption is false for its siblings), so few
captions are true for other images while images with the same objects in other arrangements fill the gallery.

Run ``python -m workbench world --help`` for a look at examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from workbench.checks import check_float, check_int
from workbench.data import grammar
from workbench.data.relations import ImageIdRelation, PairRelation, ids_to_index
from workbench.data.render import render_scene
from workbench.data.sampling import sample_captions, sample_group, sample_scene
from workbench.data.scene import COLOURS, GRID, SHAPES, SIZES, CaptionSpec, Obj, Scene, relation_holds

# For training the teacher: change_attribute split by attribute, so sizes (rarely named) get their share.
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
    # --- options of other worlds (defaults: today's)
    caption_style: str = "pair"  # "pair": today's captions; "chain": every object named, consecutive ones related
    group_size: int = 1  # > 1: contrast groups of images sharing one object set in different arrangements
    discriminative: bool = False  # captions must be false for every other image of their group

    def __post_init__(self) -> None:
        check_int("seed", self.seed, min_value=0)
        for name in ("n_train", "n_val", "n_test"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("captions_per_image", self.captions_per_image, min_value=1, max_value=20)
        for name in ("p_three_objects", "p_relational", "p_colour", "p_size"):
            check_float(name, getattr(self, name), min_value=0.0, max_value=1.0)
        check_float("noise", self.noise, min_value=0.0, max_value=0.5)
        if self.caption_style not in ("pair", "chain"):
            raise ValueError(f"caption_style must be 'pair' or 'chain', got {self.caption_style!r}")
        check_int("group_size", self.group_size, min_value=1, max_value=20)

    def size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]
















# ----------------------------------------------------------------------------------------- near misses








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


def fact_columns(width: int) -> tuple[list[int], list[int]]:
    """(mention columns, relation columns) of a fact-id table ``width`` wide: (m0, m1, rel01, m2, rel12, ...).

    Today's captions use width 3: ([0, 1], [2]); chains of 3 mentions width 5: ([0, 1, 3], [2, 4]).
    """
    mentions = [j for j in range(width) if j < 2 or (j >= 3 and (j - 3) % 2 == 0)]
    return mentions, [j for j in range(width) if j not in mentions]


def caption_fact_ids(specs: list[CaptionSpec]) -> torch.Tensor:
    """long [M, W]: ids of each caption's facts, -1 where absent. W = 3 for today's captions: (mention 1,
    mention 2 or -1, relation fact or -1); chains append (mention k+1, relation fact k/k+1) pairs (W = 5 for 3)."""
    most = max((len(spec.mentions) for spec in specs), default=2)
    width = max(3, 2 * most - 1)
    m_cols, r_cols = fact_columns(width)
    out = torch.full((len(specs), width), -1, dtype=torch.long)
    for i, spec in enumerate(specs):
        ids = [mention_id(m.shape, m.colour, m.size) for m in spec.mentions]
        out[i, m_cols[: len(ids)]] = torch.tensor(ids)
        for k, (a, b, relation) in enumerate(spec.relations):
            out[i, r_cols[k]] = relation_fact_id(relation, ids[a], ids[b])
    return out


def count_true_facts(mention_rows: torch.Tensor, relation_rows: torch.Tensor, fact_ids: torch.Tensor) -> torch.Tensor:
    """How many facts hold, for scene fact-table rows and caption fact ids.

    Args:
        mention_rows: bool [q, N_MENTIONS]; relation_rows: bool [q, N_RELATION_FACTS] (rows of the scene tables).
        fact_ids: long [c, W] caption fact ids (-1 = no such fact; columns per :func:`fact_columns`).

    Returns:
        long [q, c]: for every scene row and caption, the number of the caption's facts that hold.
    """
    has, ids = fact_ids >= 0, fact_ids.clamp(min=0)
    m_cols, r_cols = fact_columns(fact_ids.shape[1])
    true = (mention_rows[:, ids[:, 0]] & has[:, 0]).long()
    for j in m_cols[1:]:
        true += mention_rows[:, ids[:, j]] & has[:, j]
    for j in r_cols:
        true += relation_rows[:, ids[:, j]] & has[:, j]
    return true


@dataclass
class Split:
    """One split of the world. Image ``i``'s captions are those ``c`` with ``caption_image[c] == i``.

    Attributes:
        name: "train" | "val" | "test".
        scenes: N scene descriptions; captions: M caption specs; texts: M strings.
        images: float [N, 3, 24, 24]; tokens: long [M, T]; caption_image: long [M].
        image_ids, caption_ids: long [N] / [M], ids unique across the world's splits (for score stores).
        groups: long [N] contrast-group id of each image (``None``: no groups; each image is its own).
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
    groups: torch.Tensor | None = None
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
        ids = self.fact_ids[cap]  # [P, W]
        has, idc = ids >= 0, ids.clamp(min=0)
        m_cols, r_cols = fact_columns(ids.shape[1])
        true = (m[img, idc[:, 0]] & has[:, 0]).long() + (m[img, idc[:, 1]] & has[:, 1])
        for j in m_cols[2:]:
            true += m[img, idc[:, j]] & has[:, j]
        for j in r_cols:
            true += r[img, idc[:, j]] & has[:, j]
        return true

    def true_facts_block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """long [q, c]: true-fact counts for all pairs of ``img`` [q] x ``cap`` [c]."""
        m, r = self.fact_tables
        return count_true_facts(m[img], r[img], self.fact_ids[cap])

    def relevance_pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """Graded relevance float [P] of aligned (image index, caption index) pairs."""
        return self.true_facts_pairs(img, cap).float() / self.num_facts[cap].float()

    def mention_relevance_pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """Like :meth:`relevance_pairs` but counting only the mention facts (the relation fact ignored)."""
        m, _ = self.fact_tables
        ids = self.fact_ids[cap][:, fact_columns(self.fact_ids.shape[1])[0]]
        has, idc = ids >= 0, ids.clamp(min=0)
        true = (m[img[:, None], idc] & has).long().sum(-1)
        return true.float() / has.sum(-1).float()

    def relevance_block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """Graded relevance float [q, c] for all pairs of ``img`` [q] x ``cap`` [c]."""
        return self.true_facts_block(img, cap).float() / self.num_facts[cap].float()

    def grounding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each caption's objects are in its own image (for the teacher's grounding auxiliary loss).

        Returns:
            (positions long [M, K]: token index of each mention's shape word in written order, -1 if none;
             cells bool [M, K, 9]: grid cells holding an object that matches that mention), K = the most mentions
            of a caption (at least 2; 3 for chains of 3 objects).
        """
        if self._grounding is None:
            self._grounding = _grounding_targets(self)
        return self._grounding[:2]

    def image_index(self, image_ids: torch.Tensor) -> torch.Tensor:
        """Global image ids long [P] -> split indices long [P]."""
        return ids_to_index(self.image_ids, image_ids, "image_ids", self.name)

    def caption_index(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """Global caption ids long [P] -> split indices long [P]."""
        return ids_to_index(self.caption_ids, caption_ids, "caption_ids", self.name)

    def layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each caption's (k+1)-th mentioned object is relative to its k-th, in its own image (for the
        teacher's layout auxiliary loss): the pairs a relation links in a chain ("A left of B above C": (A, B),
        (B, C)); the two mentions of a pair or conjunction caption.

        Returns:
            (codes long [M, K-1]: ``3 * (row sign + 1) + (column sign + 1)`` in 0..8, -1 when there is no
             (k+1)-th mention or a mention of the pair matches several objects;
             positions long [M, K-1]: the token that reads it, the last word between the two mentions (a relation
             phrase's last word, or "and"), -1 when there is no (k+1)-th mention).
        """
        if self._layout is None:
            positions, cells = self.grounding()
            unique = cells.sum(-1) == 1  # [M, K]
            cell = cells.float().argmax(-1)  # [M, K]
            row, col = cell // GRID, cell % GRID
            code = 3 * (torch.sign(row[:, 1:] - row[:, :-1]) + 1) + torch.sign(col[:, 1:] - col[:, :-1]) + 1
            keep = unique[:, 1:] & unique[:, :-1] & (positions[:, 1:] >= 0)
            self._layout = torch.where(keep, code, torch.full_like(code, -1))
        return self._layout, self._grounding[2]

    def relations(self) -> dict[str, PairRelation]:
        """The two evaluation protocols: {"semantic": true-for-image, "coco": written-for-image}."""
        return {"semantic": SemanticRelation(self), "coco": ImageIdRelation(self.caption_image, self.num_images)}


def _grounding_targets(split: Split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shape-word positions long [M, K], matching cells bool [M, K, 9], layout-reading positions long [M, K-1])."""
    specs = [grammar.parse(text) for text in split.texts]
    k = max([2] + [len(spec.mentions) for spec in specs])
    positions = torch.full((split.num_captions, k), -1, dtype=torch.long)
    cells = torch.zeros(split.num_captions, k, GRID * GRID, dtype=torch.bool)
    between = torch.full((split.num_captions, k - 1), -1, dtype=torch.long)
    shape_words = {w for options in grammar.SHAPE_WORDS.values() for w in options}
    for c, (text, spec) in enumerate(zip(split.texts, specs, strict=True)):
        scene = split.scenes[int(split.caption_image[c])]
        words = text.split()
        where = [i + 1 for i, w in enumerate(words) if w in shape_words]  # +1 for [CLS]
        starts = [i + 1 for i, w in enumerate(words) if w == "a"]  # each mention starts with "a"
        for j, mention in enumerate(spec.mentions):
            positions[c, j] = where[j]
            if j:
                between[c, j - 1] = starts[j] - 1  # the word before the mention's "a"
            for o in scene.objects:
                cells[c, j, o.row * GRID + o.col] |= mention.matches(o)
    return positions, cells, between


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
    scenes, captions, texts, owner, groups = [], [], [], [], []
    if cfg.group_size == 1:
        for i in range(cfg.size(split)):
            scene = sample_scene(rng, cfg.p_three_objects)
            scenes.append(scene)
            for spec, text in sample_captions(scene, rng, cfg):
                captions.append(spec)
                texts.append(text)
                owner.append(i)
    else:  # contrast groups: consecutive images share one object set in different arrangements
        while len(scenes) < cfg.size(split):
            group = sample_group(rng, cfg)[: cfg.size(split) - len(scenes)]
            groups += [len(groups) and groups[-1] + 1] * len(group)
            for k, scene in enumerate(group):
                for spec, text in sample_captions(scene, rng, cfg, tuple(group[:k] + group[k + 1 :])):
                    captions.append(spec)
                    texts.append(text)
                    owner.append(len(scenes))
                scenes.append(scene)
    images = torch.from_numpy(np.stack([render_scene(s, rng, noise=cfg.noise) for s in scenes]))
    return Split(
        name=split, scenes=scenes, captions=captions, texts=texts, images=images,
        tokens=grammar.tokenize(texts, grammar.token_width(texts)),
        caption_image=torch.tensor(owner, dtype=torch.long),
        image_ids=torch.arange(len(scenes)) + image_offset, caption_ids=torch.arange(len(texts)) + caption_offset,
        groups=torch.tensor(groups, dtype=torch.long) if groups else None,
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








# ------------------------------------------------------------------------------------------------ presets

WORLD_PRESETS: dict[str, WorldConfig] = {
    # today's world: partial two-object captions, a caption is true of a median ~11 other training images
    "ambiguous-v1": WorldConfig(),
    # every caption names all 3 objects (colour and size always) chained by two relations; images come in contrast
    # groups of 3 (same objects, other arrangements) and each caption is false for its siblings
    "contrast-chain-v1": WorldConfig(p_three_objects=1.0, p_colour=1.0, p_size=1.0, caption_style="chain",
                                     group_size=3, discriminative=True),
}


def world_preset(name: str, **overrides) -> WorldConfig:
    """A named :class:`WorldConfig` (see :data:`WORLD_PRESETS`) with field overrides (e.g. ``seed``, sizes)."""
    if name not in WORLD_PRESETS:
        raise ValueError(f"world preset must be one of {sorted(WORLD_PRESETS)}, got {name!r}")
    return replace(WORLD_PRESETS[name], **overrides)
