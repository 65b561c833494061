"""Data-only statistics of a world split: how specific its captions are, and how relation-dependent retrieval is.

For a split (rows = images, columns = captions):
- ``caption_other_images``: per caption, how many images other than its own it is (semantically) true of;
- ``image_other_captions``: per image, how many captions written for other images are true of it;
- ``caption_confusers``: per relational caption, how many other images hold every mention but not the relation
  (what a relation-blind student cannot tell apart from a true image).
"""
from __future__ import annotations

import torch

from workbench.data.world import Split


def truth_counts(split: Split, block: int = 500) -> dict[str, torch.Tensor]:
    from workbench.data.world import fact_columns

    m, r = split.fact_tables
    ids = split.fact_ids
    has, idc = ids >= 0, ids.clamp(min=0)
    m_cols, r_cols = fact_columns(ids.shape[1])
    n_img, n_cap = split.num_images, split.num_captions
    cap_other = torch.zeros(n_cap, dtype=torch.long)
    img_other = torch.zeros(n_img, dtype=torch.long)
    confusers = torch.zeros(n_cap, dtype=torch.long)
    owner = split.caption_image
    is_rel = has[:, r_cols].any(1)
    for i0 in range(0, n_img, block):
        rows = torch.arange(i0, min(i0 + block, n_img))
        mention_ok = torch.ones(len(rows), n_cap, dtype=torch.bool)
        for j in m_cols:
            mention_ok &= m[rows][:, idc[:, j]] | ~has[:, j]
        rel_ok = torch.ones(len(rows), n_cap, dtype=torch.bool)
        for j in r_cols:
            rel_ok &= r[rows][:, idc[:, j]] | ~has[:, j]
        true = mention_ok & rel_ok
        own = owner[None, :] == rows[:, None]
        true_other = true & ~own
        cap_other += true_other.sum(0)
        img_other[rows] = true_other.sum(1)
        confusers += (mention_ok & ~rel_ok & ~own & is_rel[None]).sum(0)
    return {"caption_other_images": cap_other, "image_other_captions": img_other, "caption_confusers": confusers,
            "relational": is_rel}


def summary(split: Split) -> dict[str, float]:
    c = truth_counts(split)
    co, io = c["caption_other_images"].float(), c["image_other_captions"].float()
    conf, rel = c["caption_confusers"].float(), c["relational"]
    def q(x, p):
        return float(torch.quantile(x, p))
    return {
        "caption_other_images_mean": co.mean().item(), "caption_other_images_median": q(co, 0.5),
        "caption_other_images_frac0": (co == 0).float().mean().item(),
        "image_other_captions_mean": io.mean().item(), "image_other_captions_median": q(io, 0.5),
        "image_other_captions_frac0": (io == 0).float().mean().item(),
        # best-case FN share of a top-8 slate if the miner ranks every true candidate first
        "fn_bound_t2i": (co.clamp(max=8) / 8).mean().item(), "fn_bound_i2t": (io.clamp(max=8) / 8).mean().item(),
        "confusers_mean": conf[rel].mean().item() if rel.any() else 0.0,
        "confusers_median": q(conf[rel], 0.5) if rel.any() else 0.0,
        "frac_captions_with_confuser": (conf[rel] > 0).float().mean().item() if rel.any() else 0.0,
    }
