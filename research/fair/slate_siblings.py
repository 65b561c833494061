"""Why rank distillation over mined slates does not teach relations here: what a trained student's own mined
training slates hold of each query's contrast siblings, how the teacher orders the positive against them, and
whether the student learned that order.

On the default world every image has two *contrast siblings* (its group: the same objects in other arrangements;
its captions are false for them), and the room is the positive beating them (README, "The room"). A distillation
term can only teach that if the siblings are on the slates it sees and the teacher orders them below the positive.
For each saved run (final weights), on the **training** split (where its slates were mined; own captions excluded,
K = 8, as every run of the cpu profile mined):

- ``mined``: the share of mined negatives that are siblings (captions of a sibling image for i2t, a sibling image
  for t2i) and the share of queries with at least one;
- ``teacher``: the share of (own positive, mined sibling) pairs the teacher scores higher for the positive, and the
  share of CPRD's valid negatives (the teacher's top-m of the slate, m = 4) that are siblings;
- ``student``: the share of (own caption, sibling caption) pairs of each image — every caption of its siblings, not
  only mined ones — that the student scores higher for the own caption, on the training and the test split.

    PYTHONPATH=. python research/fair/slate_siblings.py RUN [LABEL_seedN=RUN ...] --store STORE.sqlite --out FILE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from research.room.common import mined_pairs
from workbench.evaluation.embed import embed_split
from workbench.experiments import open_workspace
from workbench.findings.stats import seed_stats
from workbench.io import read_json, write_json
from workbench.training.checkpoint import load_student

TOP_M = 4


def sibling_mask(groups: torch.Tensor, query_img: torch.Tensor, cand_img: torch.Tensor) -> torch.Tensor:
    """Whether each candidate's image is a contrast sibling of its query's image (same group, another image).

    ``groups`` long [N]; ``query_img`` long [Q]; ``cand_img`` long [Q, K] -> bool [Q, K].
    """
    return (groups[cand_img] == groups[query_img][:, None]) & (cand_img != query_img[:, None])


def mined_siblings(img_emb, txt_emb, split, direction: str, k: int = 8) -> dict:
    """The mined top-``k`` of every query (i2t: every image; t2i: every caption) and which of them are siblings.

    Returns {"img", "cap": long [Q, k] pair indices, "valid", "sibling": bool [Q, k], "query_img": long [Q]}.
    """
    img, cap, valid = mined_pairs(img_emb, txt_emb, split, direction, k)
    if direction == "i2t":
        query_img, cand_img = img[:, 0], split.caption_image[cap]
    else:
        query_img, cand_img = split.caption_image[cap[:, 0]], img
    return {"img": img, "cap": cap, "valid": valid, "query_img": query_img,
            "sibling": sibling_mask(split.groups, query_img, cand_img) & valid}


def teacher_view(mined: dict, split, teacher, direction: str, top_m: int = TOP_M) -> dict[str, float]:
    """How the teacher orders each query's own positive(s) against the mined siblings, and whether its top-``m``
    of the slate (CPRD's valid negatives) holds siblings. ``teacher(img [P], cap [P]) -> (logits, probs)``."""
    logits = teacher(mined["img"].flatten(), mined["cap"].flatten())[0].reshape(mined["img"].shape).float()
    logits = logits.masked_fill(~mined["valid"], float("-inf"))
    pos = _positive_logits(mined, split, teacher, direction)  # [Q, P]
    sib = mined["sibling"]
    beats = (pos[:, :, None] > logits[:, None, :]) & sib[:, None, :]  # [Q, P, K]
    top = logits.topk(min(top_m, logits.shape[1]), dim=1).indices
    valid_top = mined["valid"].gather(1, top)
    return {"positive_above_sibling": _pct(beats.sum(), sib.sum() * pos.shape[1]),
            "top_m_sibling_share": _pct((sib.gather(1, top) & valid_top).sum(), valid_top.sum())}


def _positive_logits(mined: dict, split, teacher, direction: str) -> torch.Tensor:
    """The teacher's logits of each query's own pairs: i2t every own caption [Q, 5]; t2i the caption's image [Q, 1]."""
    if direction == "i2t":
        own = _own_captions(split)[mined["query_img"]]
        img = mined["query_img"][:, None].expand_as(own)
        return teacher(img.flatten(), own.flatten())[0].reshape(own.shape).float()
    cap = mined["cap"][:, :1]
    return teacher(mined["query_img"], cap.flatten())[0].reshape(-1, 1).float()


def _own_captions(split) -> torch.Tensor:
    """long [N, 5]: each image's own captions (the world writes 5 per image)."""
    counts = torch.bincount(split.caption_image, minlength=split.num_images)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"split {split.name!r}: images have {counts.min()}-{counts.max()} captions, expected equal")
    return torch.argsort(split.caption_image, stable=True).reshape(split.num_images, int(counts[0]))


def student_sibling_accuracy(img_emb: torch.Tensor, txt_emb: torch.Tensor, split) -> float:
    """% of (image, own caption, sibling's caption) triples the student scores own > sibling's (i2t)."""
    groups, owner = split.groups, split.caption_image
    right = total = 0
    for g in torch.unique(groups):
        imgs = torch.nonzero(groups == g).flatten()
        caps = torch.nonzero(torch.isin(owner, imgs)).flatten()
        s = img_emb[imgs].float() @ txt_emb[caps].float().T  # [n, c]
        own = owner[caps][None, :] == imgs[:, None]
        diff = s[:, :, None] - s[:, None, :]  # [n, c_own, c_other]
        pair = own[:, :, None] & ~own[:, None, :]
        right += int(((diff > 0) & pair).sum())
        total += int(pair.sum())
    return 100.0 * right / total


def _pct(num, den) -> float:
    return 100.0 * float(num) / max(float(den), 1.0)


def measure(run: Path, ws, teacher) -> dict:
    """Every statistic of the module doc for one run folder (``run/checkpoint`` holds its final weights)."""
    student = load_student(run / "checkpoint").eval()
    train_img, train_txt = embed_split(student, ws.world.train)
    test_img, test_txt = embed_split(student, ws.world.test)
    out = {"student": {"train": student_sibling_accuracy(train_img, train_txt, ws.world.train),
                       "test": student_sibling_accuracy(test_img, test_txt, ws.world.test)}}
    for direction in ("i2t", "t2i"):
        mined = mined_siblings(train_img, train_txt, ws.world.train, direction)
        if direction == "t2i":  # one caption per image keeps the teacher's work at 6,000 queries
            keep = torch.arange(0, mined["img"].shape[0], 5)
            mined = {k: v[keep] for k, v in mined.items()}
        sib = mined["sibling"]
        out[direction] = {"mined_sibling_share": _pct(sib.sum(), mined["valid"].sum()),
                          "queries_with_sibling": _pct(sib.any(1).sum(), sib.shape[0]),
                          **teacher_view(mined, ws.world.train, teacher, direction)}
    return out


def summarise(results: dict[str, dict]) -> dict:
    """Per method (run folder name without ``_seedN``): every statistic's per-seed values, mean and 95 % t CI."""
    by_method: dict[str, list[dict]] = {}
    for name, res in results.items():
        by_method.setdefault(name.rsplit("_seed", 1)[0], []).append(res)
    summary = {}
    for method, runs in by_method.items():
        flat = [_flatten(r) for r in runs]
        summary[method] = {k: seed_stats([f[k] for f in flat]) for k in flat[0]}
    return summary


def _flatten(res: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in res.items():
        out |= _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": float(v)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (each with checkpoint/) named METHOD_seedN, or "
                                                "LABEL_seedN=FOLDER to name one (e.g. a tuned point)")
    parser.add_argument("--store", type=Path, required=True, help="the teacher-score store (a warm one saves time)")
    parser.add_argument("--out", type=Path, required=True, help="JSON written after every run; runs already in it "
                                                                "are kept, not measured again")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ws = open_workspace(store_path=args.store)
    teacher = ws.teacher_scores("train")
    results = read_json(args.out, what="slate-siblings results")["runs"] if args.out.is_file() else {}
    for spec in args.runs:
        label, _, folder = spec.rpartition("=")
        label = label or Path(folder).name
        if label not in results:
            results[label] = measure(Path(folder), ws, teacher)
            print(label, json.dumps(results[label]), flush=True)
            write_json(args.out, {"runs": results, "summary": summarise(results)})  # after each run: resumable


if __name__ == "__main__":
    main()
