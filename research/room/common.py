"""Shared pieces of the room experiments: worlds and stems by name, the false-negative rate of mined slates."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from workbench.data.world import Split, WorldConfig, build_world

# the stem of the room's results: the ambiguous-v1 teacher's (until 2026-12 the committed teacher in assets/teacher)
TEACHER_DIR = Path(__file__).resolve().parents[2] / "workbench" / "assets" / "teacher-ambiguous-v1"
STEM_CACHE = Path(__file__).resolve().parents[2] / "runs" / "room" / "stems"


def world_config(name: str) -> WorldConfig:
    from workbench.data import world as w

    presets = getattr(w, "WORLD_PRESETS", {"ambiguous-v1": WorldConfig()})
    if name in ("default", "ambiguous-v1") and name not in presets:
        return WorldConfig()
    return presets[name]


@functools.lru_cache(maxsize=2)
def get_world(name: str):
    return build_world(world_config(name))


def world_of(world: str | dict):
    """The world a run was trained on: a preset name (``student.pt`` runs) or the ``WorldConfig`` fields its
    checkpoint's config.json records (``data.world``)."""
    return get_world(world) if isinstance(world, str) else build_world(WorldConfig(**world))


def get_stem(world_name: str, world=None):
    """The committed teacher's stem for worlds rendered like today's; else a stem pre-trained on this world."""
    from workbench.models.teacher import load_teacher

    cfg = world_config(world_name)
    if not getattr(cfg, "needs_own_stem", False):
        return load_teacher(TEACHER_DIR).stem
    from workbench.models.stem import PatchStem
    from workbench.training.stem import pretrain_stem

    path = STEM_CACHE / f"{world_name}.pt"
    if path.is_file():
        stem = PatchStem()
        stem.load_state_dict(torch.load(path))
        return stem.eval().requires_grad_(False)
    stem = pretrain_stem((world or get_world(world_name)).train)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stem.state_dict(), path)
    return stem


def mined_pairs(img_emb: torch.Tensor, txt_emb: torch.Tensor, split: Split, direction: str, k: int = 8):
    """The gallery-mined top-``k`` negatives of every query of ``split`` (own captions excluded: the "coco"
    relation) as (image ids long [Q, k], caption ids long [Q, k], valid bool [Q, k])."""
    from workbench.scores.mining import mine_hard_negatives, relation_exclude

    q, c = (img_emb, txt_emb) if direction == "i2t" else (txt_emb, img_emb)
    own = relation_exclude(split.relations()["coco"], direction)
    mined = mine_hard_negatives(q.float(), c.float(), k, positives=own)
    rows = torch.arange(len(q))[:, None].expand_as(mined.indices)
    idx = mined.indices.clamp(min=0)
    img, cap = (rows, idx) if direction == "i2t" else (idx, rows)
    return img, cap, mined.valid


@torch.no_grad()
def false_negative_rate(img_emb: torch.Tensor, txt_emb: torch.Tensor, split: Split, k: int = 8) -> dict[str, float]:
    """Share of gallery-mined top-``k`` negatives (own captions excluded: the split's "coco" relation) that are
    semantically true for the query pair, per direction, plus the share of queries with >= 1 such negative."""
    sem = split.relations()["semantic"]
    out = {}
    for direction in ("i2t", "t2i"):
        img, cap, valid = mined_pairs(img_emb, txt_emb, split, direction, k)
        truth = sem.pairs(img.flatten(), cap.flatten()).reshape(img.shape) & valid
        out[f"fn_rate_{direction}"] = 100 * truth.float().sum().item() / valid.sum().item()
        out[f"fn_any_{direction}"] = 100 * truth.any(1).float().mean().item()
    return out
