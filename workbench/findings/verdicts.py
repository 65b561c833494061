"""The rules that turn the findings' numbers into verdicts: ``docs/protocol.md`` § 5, written before the runs.

Each rule is a small function of ``findings.json`` returning ``{"verdict", "reason"}``, so a reader can check it
against the numbers. Comparisons are paired differences by seed with a 95 % t interval
(:func:`~workbench.findings.stats.paired_difference`); a difference "holds" when its interval excludes 0.
Verdicts: ``"reproduced"``, ``"not reproduced"``, ``"inconclusive"`` (the deciding interval includes 0) and
``"untestable"`` (a positive control failed, or the runs the rule needs are missing).
"""

from __future__ import annotations

from typing import Any

RULES = {
    "finding1": "(a) Over the bulk of pairs (the image->text easy negatives) the teacher's match probabilities are "
                "concentrated (|skewness| > 1 or more than 50% of the mass within 5% of 0 or 1) and the student's "
                "logits near normal (|skewness| < 0.5 and |excess kurtosis| < 1); (b) the best ranking method "
                "(ListMLE, CPRD, RankNet) minus the best logit method (KL, MSE), each chosen by final validation "
                "RSUM, in test RSUM paired by seed. Reproduced when (a) holds and (b)'s 95% CI lies above 0; not "
                "reproduced when (b)'s CI lies below 0 (or (a) fails); inconclusive otherwise.",
    "finding2": "ListMLE over the student's K hard negatives or K easy negatives, distilling the teacher's order, a "
                "random order or the true order (paired seeds). Reproduced when (i) hard: teacher - random has a CI "
                "above 0 and (ii) easy: teacher - random has a CI that includes 0 or lies below it. Untestable when "
                "the positive control (iii) hard: truth - random does not have a CI above 0. Not reproduced "
                "otherwise.",
    "finding3": "On shared validation slates (the ITC students', one per query and seed): reproduced when CPRD's "
                "held-out ITC change after one equal-length step on its term alone is lower than ListMLE's and "
                "KL's (paired CIs below 0) and CPRD pushes up fewer of the negatives ITC pushes down than ListMLE "
                "(neg_up, paired CI below 0); not reproduced otherwise.",
    "headline": "CPRD beats ITC (or a baseline) when its paired test-RSUM difference has a 95% CI above 0. The paper's "
                "goal is met when CPRD beats ITC and every baseline that ran and closes >= 30% of the room "
                "(oracle - ITC).",
}


def side(diff: dict | None) -> str | None:
    """Where a paired difference's 95 % CI lies: ``"above"`` / ``"below"`` 0, ``"includes 0"``; None without one."""
    if not diff or diff.get("ci95") is None:
        return None
    low, high = diff["ci95"]
    return "above" if low > 0 else "below" if high < 0 else "includes 0"


def _ci(diff: dict | None) -> str:
    if not diff or diff.get("ci95") is None:
        return "n/a"
    return f"{diff['mean']:+.2f} [{diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f}]"


def _result(verdict: str, reason: str) -> dict[str, str]:
    return {"verdict": verdict, "reason": reason}


def finding1_verdict(f: dict) -> dict[str, str]:
    dist = f["finding1"]["distributions"]["i2t"]
    prob, stud = dist["teacher probability"]["easy"], dist["student logit"]["easy"]
    concentrated = abs(prob.get("skewness") or 0.0) > 1 or (prob.get("mass_extremes") or 0.0) > 0.5
    normal = abs(stud.get("skewness") or 9) < 0.5 and abs(stud.get("excess_kurtosis") or 9) < 1
    transfer = f["finding1"].get("transfer") or {}
    diff, where = transfer.get("difference"), side(transfer.get("difference"))
    shape = f"(a) teacher concentrated: {concentrated}, student near normal: {normal}"
    if where is None:
        return _result("untestable", f"{shape}; (b) needs a ranking and a logit method with >= 2 seeds each")
    what = f"(b) {transfer['ranking']} - {transfer['logit']}: {_ci(diff)} RSUM"
    if where == "below" or not (concentrated and normal):
        return _result("not reproduced", f"{shape}; {what}")
    return _result("reproduced" if where == "above" else "inconclusive", f"{shape}; {what}")


def finding2_verdict(f: dict) -> dict[str, str]:
    c = (f["finding2"].get("intervention") or {}).get("contrasts", {})
    hard, easy, control = (c.get(k) for k in ("hard: teacher - random", "easy: teacher - random",
                                               "hard: truth - random"))
    what = f"(i) hard teacher - random {_ci(hard)}; (ii) easy teacher - random {_ci(easy)}; " \
           f"(iii) hard truth - random {_ci(control)}"
    if side(control) is None or side(hard) is None:
        return _result("untestable", f"the hard-negative arms are missing or have < 2 seeds; {what}")
    if side(control) != "above":
        return _result("untestable", f"the positive control (iii) fails: the student gains nothing from the true "
                                     f"order over hard negatives; {what}")
    if side(hard) != "above":  # (i) fails: not reproduced whatever (ii) says
        return _result("not reproduced", what)
    if side(easy) is None:
        return _result("untestable", f"(i) holds but the easy-negative arms are missing or have < 2 seeds; {what}")
    return _result("reproduced" if side(easy) != "above" else "not reproduced", what)


def finding3_verdict(f: dict) -> dict[str, str]:
    c = (f["finding3"].get("shared_slates") or {}).get("contrasts", {})
    keys = ("held-out ITC change: cprd - listmle", "held-out ITC change: cprd - kl", "neg_up: cprd - listmle")
    diffs = [c.get(k) for k in keys]
    what = "; ".join(f"{k} {_ci(d)}" for k, d in zip(keys, diffs, strict=True))
    if any(side(d) is None for d in diffs):
        return _result("untestable", f"needs CPRD, ListMLE and KL on >= 2 seeds' shared slates; {what}")
    ok = all(side(d) == "below" for d in diffs)
    return _result("reproduced" if ok else "not reproduced", what)


def verdicts(f: dict) -> dict[str, dict[str, str]]:
    """``{finding: {"verdict", "reason"}}`` for the three findings."""
    return {"finding1": finding1_verdict(f), "finding2": finding2_verdict(f), "finding3": finding3_verdict(f)}


def headline_verdict(f: dict) -> dict[str, Any]:
    """CPRD against ITC and every baseline that ran (paired CIs of test semantic RSUM), the ITC -> teacher re-ranking
    gap it closes, and its share of the room when the profile measured one (``f["room"]``)."""
    paired = f.get("paired", {}).get("semantic", {})
    if "cprd" not in paired:
        return {"available": False}
    vs_itc = paired["cprd"]
    baselines = {name: d for name, d in f.get("paired_cprd", {}).get("semantic", {}).items()}
    r = f["retrieval"]
    gap = r["teacher_rerank"]["rsum"]["mean"] - r["itc"]["rsum"]["mean"] if "teacher_rerank" in r else None
    room = (f.get("room") or {}).get("rsum")
    out = {"available": True, "vs_itc": vs_itc, "beats_itc": side(vs_itc) == "above",
           "vs_baselines": baselines, "beats_baselines": {k: side(d) == "above" for k, d in baselines.items()},
           "gap_rsum": gap, "gap_closed": vs_itc["mean"] / gap if gap else None,
           "room_rsum": room, "room_share": vs_itc["mean"] / room if room and room > 0 else None}
    out["goal_met"] = bool(out["beats_itc"] and all(out["beats_baselines"].values())
                           and out["room_share"] is not None and out["room_share"] >= 0.3)
    return out
