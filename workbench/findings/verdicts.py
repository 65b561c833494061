"""The rules that turn the findings' numbers into verdicts (stated in the report next to each verdict).

Each rule is a small function of ``findings.json`` so a reader can check it against the numbers.
"""

from __future__ import annotations

from typing import Any

RULES = {
    "finding1": "Over the bulk of pairs (the image->text easy negatives: random captions beyond the student's "
                "rank 100; the slates over-sample positives and hard negatives, so their mixture is not a sample of "
                "pairs) the teacher's match probabilities are concentrated (|skewness| > 1 or mass within 5% of 0/1 "
                "above 50%) while the student's logits are near normal (|skewness| < 0.5 and |excess kurtosis| < 1); "
                "AND the best ranking-KD method (ListMLE or CPRD) reaches at least the RSUM of the best logit-KD "
                "method (KL or MSE).",
    "finding2": "Over the student's hard negatives the teacher's order agrees with the ground truth (mean Kendall "
                "tau teacher-vs-relevance > 0.2) clearly more than over easy negatives (by > 0.1), in both "
                "directions; AND rank distillation over hard negatives beats it over easy ones in RSUM.",
    "finding3": "CPRD's RSUM is at least that of ListMLE, ListNet and RankNet at matched weight, AND CPRD's mean "
                "gradient cosine with ITC is higher than ListMLE's.",
}


def _mean(d: dict | None) -> float | None:
    return None if d is None else d.get("mean")


def finding1_verdict(f: dict) -> bool:
    dist = f["finding1"]["distributions"]["i2t"]
    prob, stud = dist["teacher probability"]["easy"], dist["student logit"]["easy"]
    skew = prob.get("skewness") or 0.0
    concentrated = abs(skew) > 1 or (prob.get("mass_extremes") or 0.0) > 0.5
    normal = abs(stud.get("skewness") or 9) < 0.5 and abs(stud.get("excess_kurtosis") or 9) < 1
    kd = f["finding1"]["kd_rsum"]
    rank = max((_mean(kd.get(m)) or -1 for m in ("listmle", "cprd")), default=-1)
    logit = max((_mean(kd.get(m)) or -1 for m in ("kl", "mse")), default=-1)
    return bool(concentrated and normal and rank >= logit)


def finding2_verdict(f: dict) -> bool:
    ok = True
    for agreement in f["finding2"]["agreement"].values():
        hard = _mean(agreement["hard"]["teacher_relevance"])
        easy = _mean(agreement["easy"]["teacher_relevance"])
        ok &= hard is not None and hard > 0.2 and (easy is None or hard - easy > 0.1)
    ab = f["finding2"]["ablation_rsum"]
    hard, easy = _mean(ab.get("hard (student top-K)")), _mean(ab.get("easy (beyond rank R)"))
    return bool(ok and hard is not None and easy is not None and hard > easy)


def finding3_verdict(f: dict) -> bool:
    m = f["finding3"]["methods_rsum"]
    cprd = _mean(m.get("cprd"))
    others = [_mean(m.get(k)) for k in ("listmle", "listnet", "ranknet") if k in m]
    cos = f["finding3"]["gradient_cosine"]
    coordinated = "cprd" in cos and "listmle" in cos and cos["cprd"]["mean"] > cos["listmle"]["mean"]
    return bool(cprd is not None and others and all(cprd >= o for o in others) and coordinated)


def verdicts(f: dict) -> dict[str, bool]:
    return {"finding1": finding1_verdict(f), "finding2": finding2_verdict(f), "finding3": finding3_verdict(f)}


def headline_verdict(f: dict) -> dict[str, Any]:
    """CPRD vs ITC-only (> 2 std) and the share of the ITC -> teacher re-ranking RSUM gap it closes (>= 30%)."""
    r = f["retrieval"]
    if not all(k in r for k in ("itc", "cprd", "teacher_rerank")):
        return {"available": False}
    itc, cprd, teacher = r["itc"]["rsum"], r["cprd"]["rsum"], r["teacher_rerank"]["rsum"]
    gain = cprd["mean"] - itc["mean"]
    spread = max(itc["std"] or 0.0, cprd["std"] or 0.0)
    gap = teacher["mean"] - itc["mean"]
    closed = gain / gap if gap > 0 else None
    return {"available": True, "gain_rsum": gain, "std": spread, "beats_itc_by_2std": bool(gain > 2 * spread),
            "gap_rsum": gap, "gap_closed": closed, "closes_30pct": bool(closed is not None and closed >= 0.3)}
