"""Helpers of the exploration notebooks: 01 (score distributions), 02 (hard vs easy negatives), 05 (real models).

- Students: :func:`demo_checkpoints` (the runs ``make demo`` wrote, when present) and :func:`ensure_students`
  (train the missing ones, or reuse a finished run with the same settings).
- Finding 1: :func:`slate_scores` scores the *same* evaluation slate pairs with any student, :func:`score_view`
  picks one model's scores (the teacher as logit / probability / tempered logit), :func:`distribution_table` and
  :func:`teacher_view_table` summarise them.
- Finding 2: :func:`window_ranks`, :func:`query_frame` (one query's candidates with student rank, teacher rank and
  the world's relevance), :func:`pair_statistics` / :func:`window_table` (how many of a window's negative pairs the
  truth can order at all, and how often the teacher orders them right), :func:`agreement_table`.
- Real models: :func:`real_sources` (where the Karpathy data and the weights are, from environment variables),
  :func:`real_score_groups` (teacher and student scores of positives, hard and easy negatives on real data),
  :func:`thumbnails`.

Shapes: ``Q`` queries, ``L`` slate entries per query (positives, then hard, then easy negatives).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.analysis._arrays import as_array, as_mask
from workbench.analysis.distributions import (
    describe,
    group_labels,
    grouped_values,
    scale_sensitivity,
    teacher_views,
)
from workbench.analysis.evaluate import embed_split
from workbench.analysis.runs import train_student_run
from workbench.analysis.slates_eval import EvalSlates
from workbench.checks import check_choice, check_int
from workbench.data.karpathy import DATASETS
from workbench.scores.mining import mine_hard_negatives, relation_exclude, sample_easy_negatives

TEACHER = "teacher"
"""The model name of the cross-encoder in :func:`score_view` (every other name is a student)."""
VIEWS = ("logit", "probability", "tempered")
WINDOWS = ("hard", "easy", "hard+easy")
ORDERS = ("student", "teacher", "relevance")
DESCRIBE_COLUMNS = ("n", "mean", "std", "skewness", "excess_kurtosis", "mass_extremes", "shapiro_w")


# ------------------------------------------------------------------------------------------------- students


def demo_checkpoints(demo_dir: str | Path | None, names: Sequence[str] = ("itc", "kl", "cprd"), seed: int = 0
                     ) -> dict[str, Path]:
    """Checkpoint folders of the demo's finished headline runs: ``{name: demo_dir/runs/headline/<name>_seed<seed>/
    checkpoint}`` for each name whose run holds ``metrics.json`` and ``checkpoint/config.json`` (``{}`` when
    ``demo_dir`` is ``None`` or missing)."""
    if demo_dir is None:
        return {}
    found = {}
    for name in names:
        run = Path(demo_dir) / "runs" / "headline" / f"{name}_seed{seed}"
        if (run / "metrics.json").is_file() and (run / "checkpoint" / "config.json").is_file():
            found[name] = run / "checkpoint"
    return found


def _same_run(run: Path, ws: Any, cfg: Any) -> bool:
    """True when ``run`` is a finished run of ``cfg`` on ``ws``'s world (config.json's fit and world match)."""
    if not (run / "metrics.json").is_file() or not (run / "config.json").is_file():
        return False
    recorded = json.loads((run / "config.json").read_text())
    wanted = json.loads(json.dumps({"fit": cfg.to_dict(), "world": asdict(ws.world.config)}))
    return recorded.get("fit") == wanted["fit"] and recorded.get("world") == wanted["world"]


def ensure_students(ws: Any, configs: Mapping[str, Any], out_dir: str | Path, *,
                    log: Callable[[str], None] = print) -> dict[str, Path]:
    """Checkpoint folder of a student trained with each config: ``out_dir/<name>/checkpoint``.

    A run already in ``out_dir/<name>`` with the same fit config and world is reused; any other is trained now with
    :func:`~workbench.analysis.runs.train_student_run` (no teacher re-ranking), overwriting what was there.

    Args:
        ws: a :class:`~workbench.analysis.runs.Workspace`.
        configs: ``{name: FitConfig}``.
        out_dir: the folder holding one run folder per name.
        log: receives one line per student.
    """
    found = {}
    for name, cfg in configs.items():
        run = Path(out_dir) / name
        if _same_run(run, ws, cfg):
            log(f"{name}: reusing {run}")
        else:
            terms = " + ".join(t.name for t in cfg.losses)
            log(f"{name}: training {terms} for {cfg.steps} steps -> {run}")
            train_student_run(ws, cfg, run, rerank=False)
        found[name] = run / "checkpoint"
    return found


# ------------------------------------------------------------------------------------------------ finding 1


@torch.no_grad()
def slate_scores(student: Any, split: Any, slates: EvalSlates) -> torch.Tensor:
    """float [Q, L]: a student's logits (``logit_scale * cosine``) on the slates' own (query, entry) pairs, so that
    several students are compared on the same pairs (padding entries hold the score of candidate 0).

    Args:
        student: a dual encoder (built-in or Hugging Face) that :func:`~workbench.analysis.evaluate.embed_split`
            can embed ``split`` with.
        split: the split the slates were built on.
        slates: :class:`~workbench.analysis.slates_eval.EvalSlates` with ``queries`` and ``candidates``.
    """
    if slates.queries is None or slates.candidates is None:
        raise ValueError("slates must carry queries and candidates (build them with build_eval_slates)")
    img, txt = (e.float().cpu() for e in embed_split(student, split))
    q_emb, c_emb = (img, txt) if slates.direction == "i2t" else (txt, img)
    scale = student.logit_scale.detach().float().cpu()
    return (scale * (q_emb[slates.queries][:, None, :] * c_emb[slates.candidates]).sum(-1)).float()


def score_view(slates: EvalSlates, students: Mapping[str, torch.Tensor], model: str, view: str = "logit",
               temperature: float = 4.0) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """One model's scores on the slates.

    Args:
        slates: the evaluation slates (their ``teacher`` holds ITM logits).
        students: ``{name: float [Q, L]}`` student logits on the same entries (see :func:`slate_scores`).
        model: :data:`TEACHER` or a student name.
        view: the teacher's view: ``"logit"``, ``"probability"`` (sigmoid) or ``"tempered"`` (logit / temperature);
            ignored for students (always their logits).
        temperature: the tempered view's divisor (> 0).

    Returns:
        (float64 [Q, L] scores, the scale's natural bounds (``(0, 1)`` for probabilities, else ``None``), a label).
    """
    check_choice("model", model, [TEACHER, *students])
    if model != TEACHER:
        return as_array(f"students[{model!r}]", students[model]).astype(np.float64), None, f"student {model} logit"
    check_choice("view", view, VIEWS)
    x = teacher_views(slates.teacher.numpy(), temperature=temperature)[view]
    label = f"teacher {view}" + (f" (T = {temperature:g})" if view == "tempered" else "")
    return x, ((0.0, 1.0) if view == "probability" else None), label


def slate_labels(slates: EvalSlates) -> np.ndarray:
    """int8 [Q, L] group codes of the entries (0 positive, 1 hard, 2 easy, -1 padding), as ``group_labels``."""
    return group_labels(slates.positive.numpy(), slates.hard.numpy(), slates.easy.numpy())


def distribution_table(slates: EvalSlates, students: Mapping[str, torch.Tensor], *, temperature: float = 4.0,
                       columns: Sequence[str] = DESCRIBE_COLUMNS) -> pd.DataFrame:
    """:func:`~workbench.analysis.distributions.describe` of every (source, group): the teacher's three views, then
    each student's logits, over positives, hard and easy negatives.

    Returns:
        A frame indexed by (source label, group) with ``columns`` (``mass_extremes``: share within 5% of either end
        of the range; ``shapiro_w``: near 1 = near normal). Empty groups are left out.
    """
    labels = slate_labels(slates)
    sources = [(TEACHER, v) for v in VIEWS] + [(name, "logit") for name in students]
    rows = {}
    for model, view in sources:
        x, bounds, label = score_view(slates, students, model, view, temperature)
        for group, values in grouped_values(x, labels).items():
            if values.size:
                d = describe(values, bounds=bounds)
                rows[(label, group)] = {c: d.get(c) for c in columns}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["source", "group"])


def teacher_view_table(slates: EvalSlates, *, temperature: float = 4.0) -> pd.DataFrame:
    """What each teacher view changes for a loss that reads it, over the slates' negatives.

    Rows: ``logit``, ``probability``, ``tempered``. Columns: ``skewness`` and ``mass_extremes`` of the view's values,
    the mean normalised ``softmax_entropy`` and ``top1_mass`` of each query's softmax over its slate (what a KL loss
    matches), and ``order_tau``: the mean Kendall tau of the view's order of the negatives against the logits' (what
    a ranking loss learns; 1 = the same order).
    """
    negatives = (slates.hard | slates.easy).numpy()
    sens = scale_sensitivity(slates.teacher.numpy(), slates.valid.numpy(), temperature=temperature,
                             negatives=negatives)
    rows = {view: {"skewness": s["describe"]["skewness"], "mass_extremes": s["describe"]["mass_extremes"],
                   "softmax_entropy": s["per_query"]["entropy"]["mean"],
                   "top1_mass": s["per_query"]["top_mass"]["mean"], "order_tau": s["order_tau"]["mean"]}
            for view, s in sens.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


# ------------------------------------------------------------------------------------------------ finding 2


def window_mask(slates: EvalSlates, window: str) -> torch.Tensor:
    """bool [Q, L]: the entries of ``window`` (``"hard"``, ``"easy"`` or ``"hard+easy"``)."""
    check_choice("window", window, WINDOWS)
    return {"hard": slates.hard, "easy": slates.easy, "hard+easy": slates.hard | slates.easy}[window]


def window_ranks(scores: Any, mask: Any) -> np.ndarray:
    """Rank of every masked entry among its row's masked entries: 1 = highest score; ties go to the lower column.

    Args:
        scores: float [Q, L]; mask: bool [Q, L].

    Returns:
        float [Q, L], ranks 1..n_q where ``mask``, NaN elsewhere.
    """
    s = as_array("scores", scores, ndim=2)
    m = as_mask("mask", mask, s.shape)
    keys = np.where(m, -s, np.inf)
    order = np.argsort(keys, axis=1, kind="stable")
    ranks = np.empty(s.shape)
    np.put_along_axis(ranks, order, np.arange(1, s.shape[1] + 1, dtype=np.float64)[None].repeat(len(s), 0), axis=1)
    return np.where(m, ranks, np.nan)


def describe_item(split: Any, kind: str, index: int) -> str:
    """A caption's text (``kind="caption"``), or an image's scene description (the built-in world) / file name (real
    data) (``kind="image"``)."""
    check_choice("kind", kind, ["caption", "image"])
    if kind == "caption":
        return split.texts[index]
    scenes = getattr(split, "scenes", None)
    return scenes[index].describe() if scenes is not None else str(split.image_paths[index].name)


def query_text(slates: EvalSlates, split: Any, q: int) -> str:
    """What query row ``q`` is: the image's scene (i2t) or the caption (t2i)."""
    q = check_int("q", q, min_value=0, max_value=len(slates.student) - 1)
    kind = "image" if slates.direction == "i2t" else "caption"
    return describe_item(split, kind, int(slates.queries[q]))


def query_frame(slates: EvalSlates, split: Any, q: int, window: str = "hard", order: str = "student"
                ) -> pd.DataFrame:
    """One query's positives and the negatives of one window, with both models' ranks and the truth.

    Args:
        slates: evaluation slates with ``queries`` / ``candidates``.
        split: the split they were built on (for captions' texts and scenes).
        q: the query row (0..Q-1).
        window: ``"hard"``, ``"easy"`` or ``"hard+easy"``: whose negatives are listed and ranked.
        order: sort the negatives by ``"student"`` rank, ``"teacher"`` rank or ``"relevance"`` (best first;
            ties by student rank).

    Returns:
        One row per entry: ``role`` (positive / hard / easy), ``candidate`` (split index), ``text`` (caption, or the
        image's scene for t2i), ``student`` (logit), ``student_rank`` and ``teacher_rank`` (1 = first, among the
        window's negatives; empty for positives), ``teacher`` (ITM logit), ``relevance`` (share of the caption's
        facts true in the image). Positives first, by student score.
    """
    q = check_int("q", q, min_value=0, max_value=len(slates.student) - 1)
    check_choice("order", order, ORDERS)
    mask = window_mask(slates, window)[q : q + 1].numpy()
    s, u, rel = (x[q : q + 1].numpy().astype(np.float64) for x in (slates.student, slates.teacher, slates.relevance))
    s_rank, u_rank = window_ranks(s, mask)[0], window_ranks(u, mask)[0]
    kind = "caption" if slates.direction == "i2t" else "image"
    rows = []
    for j in np.flatnonzero(slates.positive[q].numpy() | mask[0]):
        role = "positive" if slates.positive[q, j] else ("hard" if slates.hard[q, j] else "easy")
        cand = int(slates.candidates[q, j])
        rows.append({"role": role, "candidate": cand, "text": describe_item(split, kind, cand),
                     "student": s[0, j], "student_rank": s_rank[j], "teacher": u[0, j], "teacher_rank": u_rank[j],
                     "relevance": rel[0, j]})
    frame = pd.DataFrame(rows)
    key = {"student": ["student_rank"], "teacher": ["teacher_rank"], "relevance": ["relevance", "student_rank"]}
    pos, neg = frame[frame.role == "positive"], frame[frame.role != "positive"]
    neg = neg.sort_values(key[order], ascending=[c != "relevance" for c in key[order]], kind="stable")
    return pd.concat([pos.sort_values("student", ascending=False, kind="stable"), neg], ignore_index=True)


def pair_statistics(teacher: Any, relevance: Any, mask: Any) -> dict[str, np.ndarray]:
    """Per query, over every pair of its masked entries: can the truth order the pair, and does the teacher?

    Args:
        teacher: float [Q, L] ITM logits; relevance: float [Q, L] the world's graded relevance; mask: bool [Q, L].

    Returns:
        float [Q] arrays: ``pairs`` (pairs of masked entries), ``informative`` (share of them whose relevance
        differs, i.e. the truth prefers one), ``teacher_accuracy`` (share of those informative pairs the teacher
        orders like the truth; a teacher tie counts 1/2), ``prob_gap`` (mean ``|sigmoid(u_a) - sigmoid(u_b)|`` over
        all pairs: how far apart the teacher's own match probabilities are). NaN where a row has no pair (or, for
        ``teacher_accuracy``, no informative pair).
    """
    u = as_array("teacher", teacher, ndim=2)
    r = as_array("relevance", relevance, shape=u.shape)
    m = as_mask("mask", mask, u.shape)
    i, j = np.triu_indices(u.shape[1], 1)
    both = m[:, i] & m[:, j]  # [Q, P]
    truth, order = np.sign(r[:, i] - r[:, j]), np.sign(u[:, i] - u[:, j])
    informative = both & (truth != 0)
    right = np.where(order == truth, 1.0, np.where(order == 0, 0.5, 0.0))
    p = 1.0 / (1.0 + np.exp(-u))
    n, n_inf = both.sum(1), informative.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"pairs": n.astype(np.float64),
                "informative": np.where(n > 0, n_inf / n, np.nan),
                "teacher_accuracy": np.where(n_inf > 0, (right * informative).sum(1) / n_inf, np.nan),
                "prob_gap": np.where(n > 0, (np.abs(p[:, i] - p[:, j]) * both).sum(1) / n, np.nan)}


def window_table(slates: Mapping[str, EvalSlates]) -> pd.DataFrame:
    """Means over queries of :func:`pair_statistics` per (direction, window), with the share of the window's
    negatives that are partly true (relevance > 0).

    Args:
        slates: ``{direction: EvalSlates}``.
    """
    rows = {}
    for direction, sl in slates.items():
        for window in ("hard", "easy"):
            mask = window_mask(sl, window)
            stats = pair_statistics(sl.teacher.numpy(), sl.relevance.numpy(), mask.numpy())
            rows[(direction, window)] = {"negatives": float(mask.sum(1).float().mean()),
                                         "partly_true": float((sl.relevance[mask] > 0).float().mean()),
                                         **{k: float(np.nanmean(v)) for k, v in stats.items() if k != "pairs"}}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["direction", "window"])


def agreement_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``{direction: agreement_summary(...)}`` as a frame indexed by (direction, window, pair) with the mean, std,
    number of queries with a defined tau and the p-value of "mean tau = 0"."""
    rows = {}
    for direction, summary in summaries.items():
        for window in ("hard", "easy"):
            for pair, s in summary[window].items():
                rows[(direction, window, pair)] = {"mean": s["mean"], "std": s["std"], "n": s["n"],
                                                   "p_zero": s["p_zero"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["direction", "window", "pair"])


# ------------------------------------------------------------------------------------------------ real data


ENV = {"karpathy_json": "WORKBENCH_KARPATHY_JSON", "image_root": "WORKBENCH_IMAGE_ROOT",
       "teacher": "WORKBENCH_TEACHER", "student": "WORKBENCH_STUDENT"}
"""Where notebook 05 reads the real setting from: field -> environment variable."""


@dataclass(frozen=True)
class RealSources:
    """The data and weights of a real run.

    Attributes:
        dataset: "flickr30k" or "coco".
        karpathy_json, image_root: the Karpathy JSON file and the image folder.
        teacher, student: hub names or local folders (BLIP ITM; CLIP).
        problems: why these cannot be used (unset variables, missing paths); empty when they can.
        tiny: True for the generated tiny stand-ins (random models, random images).
    """

    dataset: str
    karpathy_json: Path | None
    image_root: Path | None
    teacher: str | None
    student: str | None
    problems: tuple[str, ...] = ()
    tiny: bool = False

    @property
    def ready(self) -> bool:
        return not self.problems

    def explain(self) -> str:
        """A few lines: what will be used, or what is missing and where to get it."""
        if self.ready:
            what = "tiny random stand-ins (numbers only show that the code runs)" if self.tiny else "real data"
            return (f"{what}: {self.dataset} from {self.karpathy_json} (images {self.image_root}); teacher "
                    f"{self.teacher}; student {self.student}")
        lines = ["the real setting is not configured:", *(f"  - {p}" for p in self.problems),
                 "set WORKBENCH_KARPATHY_JSON (dataset_flickr30k.json or dataset_coco.json), WORKBENCH_IMAGE_ROOT "
                 "(the image folder), WORKBENCH_TEACHER (e.g. Salesforce/blip-itm-base-flickr or a local folder) and "
                 "WORKBENCH_STUDENT (e.g. openai/clip-vit-base-patch16); docs/real_data.md says what to download"]
        return "\n".join(lines)


def real_sources(environ: Mapping[str, str]) -> RealSources:
    """Read :data:`ENV` (and ``WORKBENCH_DATASET``, else inferred from the JSON's name) from ``environ``.

    Unset variables and paths that do not exist are listed in ``problems`` (never raised), so a notebook can say
    what is missing and fall back to tiny models. Hub names for the models are not checked here.
    """
    values = {key: (environ.get(var) or "").strip() or None for key, var in ENV.items()}
    problems = [f"{ENV[key]} is not set" for key, v in values.items() if v is None]
    for key in ("karpathy_json", "image_root"):
        if values[key] is not None and not Path(values[key]).exists():
            problems.append(f"{ENV[key]}={values[key]} does not exist")
    json_name = Path(values["karpathy_json"] or "").name.lower()
    dataset = (environ.get("WORKBENCH_DATASET") or "").strip() or ("coco" if "coco" in json_name else "flickr30k")
    if dataset not in DATASETS:
        problems.append(f"WORKBENCH_DATASET must be one of {list(DATASETS)}, got {dataset!r}")
    paths = {k: Path(values[k]) if values[k] else None for k in ("karpathy_json", "image_root")}
    return RealSources(dataset, paths["karpathy_json"], paths["image_root"], values["teacher"], values["student"],
                       tuple(problems))


def thumbnails(split: Any, idx: Sequence[int], size: int = 96) -> torch.Tensor:
    """float [n, 3, size, size] in [0, 1]: images of a Karpathy split, squashed to a square (for ``image_grid``)."""
    size = check_int("size", size, min_value=1)
    pics = [np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0 for im in split.load_images(list(idx))]
    return torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2) if pics else torch.empty(0, 3, size, size)


@torch.no_grad()
def real_score_groups(student: Any, pair_scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], split: Any, *,
                      k_hard: int = 8, k_easy: int = 8, easy_rank: int = 100, queries: int | None = None,
                      seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Image -> text scores of a real split by group: each image's own captions, its ``k_hard`` hardest other
    captions under the student, and ``k_easy`` captions drawn beyond the student's rank ``easy_rank``.

    Args:
        student: a dual encoder (``HFStudent``); pair_scorer: ``(img long [P], cap long [P]) -> ITM logits [P]``.
        split: a Karpathy split (COCO protocol: a caption is a positive of its own image only).
        k_hard, k_easy, easy_rank: slate sizes (clamped to what the split holds).
        queries: use the first N images only (``None``: all).
        seed: the easy sample's seed.

    Returns:
        ``{"teacher logit" | "teacher probability" | "student logit": {"positive" | "hard" | "easy": float [n]}}``,
        ready for :func:`~workbench.analysis.finding_plots.score_histograms`.
    """
    img, txt = (e.float().cpu() for e in embed_split(student, split))
    n_img = len(img) if queries is None else min(check_int("queries", queries, min_value=1), len(img))
    img, scale = img[:n_img], student.logit_scale.detach().float().cpu()
    negatives = len(txt) - split.captions_per_image
    exclude = relation_exclude(split.relations()["coco"], "i2t")  # query rows 0..n_img-1 are split indices
    k_hard = min(check_int("k_hard", k_hard, min_value=1), negatives)
    easy_rank = min(check_int("easy_rank", easy_rank, min_value=0), max(negatives - k_easy, 0))
    hard = mine_hard_negatives(img, txt, k_hard, positives=exclude, scale=scale)
    easy = sample_easy_negatives(img, txt, check_int("k_easy", k_easy, min_value=1), beyond_rank=easy_rank,
                                 positives=exclude, generator=torch.Generator().manual_seed(seed), scale=scale)
    own = torch.nonzero(split.caption_image < n_img).flatten()
    pairs = {"positive": (split.caption_image[own], own)}
    for group, mined in (("hard", hard), ("easy", easy)):
        rows = torch.arange(n_img)[:, None].expand_as(mined.indices)
        pairs[group] = (rows[mined.valid], mined.indices[mined.valid])
    out: dict[str, dict[str, np.ndarray]] = {"teacher logit": {}, "teacher probability": {}, "student logit": {}}
    for group, (i, c) in pairs.items():
        u = pair_scorer(i, c).float().cpu()
        out["teacher logit"][group] = u.numpy().astype(np.float64)
        out["teacher probability"][group] = u.sigmoid().numpy().astype(np.float64)
        out["student logit"][group] = (scale * (img[i] * txt[c]).sum(-1)).numpy().astype(np.float64)
    return out

