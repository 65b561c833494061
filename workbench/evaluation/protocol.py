"""The evaluation protocol card and the teacher-cost preview, printed before a run so that its numbers can be
compared with published ones and its teacher bill is known in advance.

    card = protocol_card("flickr30k", test_split, k_test=None, fusion="itm")   # k_test defaults: 128 / 256
    print(card.text())
    print(TeacherCost("re-ranking", (("i2t", 1000, 128), ("t2i", 5000, 128)), stored=0, exact=True).text())

Published image-text retrieval numbers (BLIP, ALBEF, the CPRD paper) use the Karpathy test splits (Flickr30K: 1K
images, MSCOCO: 5K images), exactly 5 captions per image, R@1/5/10 in both directions, and, for cross-encoder
re-ranking, the dual encoder's top ``k_test`` candidates per query re-scored by the ITM head (LAVIS: ``k_test`` =
128 on Flickr30K and 256 on MSCOCO; the final score adds the ITM score and the ITC similarity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.checks import check_choice, check_int

DEFAULT_K_TEST = {"flickr30k": 128, "coco": 256, "builtin": 16}
"""Re-ranking slate per query: LAVIS / BLIP's retrieval configs for Flickr30K and MSCOCO; the workbench's own for the
built-in world."""

FUSIONS = {
    "itm": "ITM alone: the student's top-k_test are re-ordered by the teacher's ITM log-odds",
    "itm+itc": "ITM + ITC, as LAVIS: teacher ITM log-odds + the student's cosine similarity (LAVIS adds BLIP's "
               "match logit and its own ITC cosine)",
}

RECALL = {
    "coco": "a query is a hit at K when a true match is among its top K: image->text, any of the image's own "
            "captions; text->image, the caption's own image",
    "semantic": "a query is a hit at K when any candidate for which the caption is true (the world's ground "
                "truth, so false negatives count as hits) is among its top K",
}


@dataclass(frozen=True)
class ProtocolCard:
    """What a retrieval result means.

    Attributes:
        dataset: "flickr30k", "coco" or "builtin".
        split: the evaluated split ("test" for published numbers).
        num_images, num_captions: the split's gallery sizes.
        captions_per_image: captions per image (5 in the standard protocol; a mean for the built-in world).
        protocols: which hit definitions are reported ("coco": own captions / own image; "semantic": built-in).
        ks: recall cut-offs.
        k_test: re-ranking slate per query (``None``: no re-ranking).
        k_test_requested: the slate asked for, when it had to be clamped to the gallery size.
        fusion: "itm" or "itm+itc".
    """

    dataset: str
    split: str
    num_images: int
    num_captions: int
    captions_per_image: float
    protocols: tuple[str, ...]
    ks: tuple[int, ...] = (1, 5, 10)
    k_test: int | None = None
    k_test_requested: int | None = None
    fusion: str = "itm"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        cut = "/".join(str(k) for k in self.ks)
        out = [
            f"protocol   {self.dataset} {self.split}: {self.num_images} images, {self.num_captions} captions "
            f"({self.captions_per_image:g} per image)",
            f"recall     R@{cut} in %, image->text and text->image; RSUM = sum of the {2 * len(self.ks)} recalls",
        ]
        out += [f"  {name:9s}{RECALL.get(name, '')}" for name in self.protocols]
        if self.k_test is None:
            out.append("re-rank    none (student scores only)")
        else:
            clamp = "" if self.k_test_requested in (None, self.k_test) else (
                f" (asked {self.k_test_requested}; clamped to the gallery size)")
            out.append(f"re-rank    top k_test = {self.k_test} per query{clamp}; fusion {self.fusion}: "
                       f"{FUSIONS[self.fusion]}")
        out += [f"note       {n}" for n in self.notes]
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_k_test(dataset: str) -> int:
    """LAVIS's ``k_test`` for Flickr30K (128) and MSCOCO (256); 16 on the built-in world."""
    check_choice("dataset", dataset, list(DEFAULT_K_TEST))
    return DEFAULT_K_TEST[dataset]


def usable_ks(ks: tuple[int, ...], gallery: int) -> tuple[int, ...]:
    """The cut-offs a gallery of ``gallery`` items can report (R@K needs K <= gallery size)."""
    kept = tuple(k for k in ks if k <= gallery)
    return kept or (gallery,)


def protocol_card(dataset: str, split: Any, *, k_test: int | None = None, rerank: bool = True, fusion: str = "itm",
                  ks: tuple[int, ...] = (1, 5, 10)) -> ProtocolCard:
    """The card of evaluating on ``split`` (built-in or Karpathy); ``k_test=None`` takes :func:`default_k_test`.

    ``ks`` and the default ``k_test`` are clamped to the gallery size (``min(images, captions)``) for tiny debugging
    splits, and the card says so; an explicit ``k_test`` larger than the gallery or smaller than ``max(ks)`` is an
    error.
    """
    check_choice("fusion", fusion, list(FUSIONS))
    gallery = min(split.num_images, split.num_captions)
    ks = usable_ks(tuple(ks), gallery)
    if k_test is not None and rerank:  # asked for explicitly: never silently changed
        check_int("k_test", k_test, min_value=1, max_value=gallery)
        if k_test < max(ks):
            raise ValueError(f"k_test must be >= {max(ks)} (the largest recall cut-off, R@{max(ks)}: re-ranking "
                             f"reorders the top k_test, so R@{max(ks)} needs at least {max(ks)}), got {k_test}")
    requested = default_k_test(dataset) if k_test is None else k_test
    used = max(min(requested, gallery), max(ks)) if rerank else None
    notes = ()
    if ks != (1, 5, 10):
        notes = (f"the split has only {gallery} items per gallery: recalls are reported at K = {ks}",)
    if dataset != "builtin" and split.name != "test":
        notes += (f"published numbers are on the test split; this is {split.name!r}",)
    per_image = getattr(split, "captions_per_image", None) or round(split.num_captions / max(split.num_images, 1), 2)
    return ProtocolCard(dataset, split.name, split.num_images, split.num_captions, per_image,
                        tuple(split.relations()), ks, used, requested if rerank else None, fusion, notes)


@dataclass(frozen=True)
class TeacherCost:
    """Teacher pairs a run will need: per direction, queries x slate pairs, less those the store already holds.

    Attributes:
        task: "training", "re-ranking" or "store fill".
        terms: ``(direction, queries, slate)`` per direction (e.g. ``("i2t", steps x batch, K + 1)``).
        distinct: distinct pairs among them (known when ``exact``; the two directions share pairs).
        stored: distinct pairs the store already holds (known when ``exact``; unknown before mining).
        exact: whether the pairs are known (mined already) or an upper bound (mined during the run).
        store_rows: rows the store holds for this teacher and dataset (``None``: no store).
    """

    task: str
    terms: tuple[tuple[str, int, int], ...]
    distinct: int | None = None
    stored: int = 0
    exact: bool = False
    store_rows: int | None = None

    @property
    def pairs(self) -> int:
        return sum(q * k for _, q, k in self.terms)

    @property
    def to_compute(self) -> int:
        """Teacher pair scores the run will compute (an upper bound unless ``exact``)."""
        return (self.pairs if self.distinct is None else self.distinct) - self.stored

    def text(self) -> str:
        if not self.terms:
            return f"teacher    {self.task}: none (no distillation term)"
        parts = " + ".join(f"{d} {q:,} queries x {k}" for d, q, k in self.terms)
        head = f"teacher    {self.task}: {parts} = {self.pairs:,} pairs"
        if self.exact:
            distinct = "" if self.distinct in (None, self.pairs) else f" ({self.distinct:,} distinct)"
            return (f"{head}{distinct}; {self.stored:,} already in the store -> {self.to_compute:,} teacher "
                    "pair scores")
        if self.store_rows is None:
            return f"{head} at most (a pair in both directions' slates is scored once)"
        return (f"{head} at most (repeats and store hits are free); the store holds {self.store_rows:,} scores of "
                "this teacher here")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"pairs": self.pairs, "to_compute": self.to_compute}


def training_cost(steps: int, batch: int, processes: int, k: int, negatives: str, store_rows: int | None = None
                  ) -> TeacherCost:
    """Upper bound of a training run's teacher pairs: per direction ``steps x global batch`` queries, each with a
    slate of K mined negatives plus its own positive (the whole global batch for ``negatives="all"``)."""
    queries = steps * batch * processes
    slate = batch * processes if negatives == "all" else k + 1
    return TeacherCost("training", (("i2t", queries, slate), ("t2i", queries, slate)), store_rows=store_rows)
