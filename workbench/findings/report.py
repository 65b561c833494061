"""Markdown rendering of ``findings.json`` into ``report.md`` (numbers only from the findings; no claims added).

Tables are pandas DataFrames written with ``DataFrame.to_markdown``; a cell over seeds reads ``mean ± std`` (or
``mean (1 seed)`` when the std is undefined).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from workbench.findings.verdicts import RULES

HEADLINE_ORDER = ["itc", "kl", "mse", "ranknet", "listnet", "listmle", "cprd", "cprd_chain", "mined_itc", "negclip",
                  "teacher_rerank"]
TEACHER_RERANK = "teacher re-ranking the ITC student (k_test=16)"


def cell(d: Mapping[str, Any] | None, digits: int = 1) -> str:
    """``mean ± std`` of a :func:`~workbench.findings.stats.seed_stats` dict; ``–`` when missing."""
    if not d or d.get("mean") is None:
        return "–"
    if d.get("std") is None:
        return f"{d['mean']:.{digits}f} ({d.get('n', 1)} seed)"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _num(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (one dict per row, keys = column headers, in order)."""
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "(no rows)"


def labels(f: dict) -> dict[str, str]:
    """Variant name -> its label (from findings.json's plan table), plus the teacher re-ranker."""
    return {k: v["label"] for k, v in f.get("variants", {}).items()} | {"teacher_rerank": TEACHER_RERANK}


def retrieval_md(table: dict[str, dict], names: dict[str, str], order: Sequence[str] = HEADLINE_ORDER) -> str:
    cols = ["r1_i2t", "r5_i2t", "r1_t2i", "r5_t2i", "rsum"]
    keys = [k for k in order if k in table] + sorted(set(table) - set(order))
    return markdown([{"method": names.get(k, k)} | {c.replace("_", " "): cell(table[k][c]) for c in cols}
                     | {"seeds": table[k]["rsum"]["n"]} for k in keys])


def distributions_md(dist: dict) -> str:
    rows = []
    for view, groups in dist.items():
        if view == "per_query":
            continue
        for group in ("positive", "hard", "easy", "all"):
            d = groups.get(group)
            if d:
                rows.append({"scores": view, "group": group, "n": d["n"], "skewness": _num(d.get("skewness")),
                             "excess kurtosis": _num(d.get("excess_kurtosis")),
                             "mass near extremes": _num(d.get("mass_extremes")),
                             "Shapiro W": _num(d.get("shapiro_w"), 3)})
    return markdown(rows)


def agreement_md(agreement: dict) -> str:
    pairs = {"teacher_student": "teacher vs student", "teacher_relevance": "teacher vs truth",
             "student_relevance": "student vs truth"}
    return markdown([{"direction": d, "window": w} | {label: f"{_num(a[w][p]['mean'])} (n={a[w][p]['n']})"
                                                      for p, label in pairs.items()}
                     for d, a in agreement.items() for w in ("hard", "easy")])


def validity_md(v: dict) -> str:
    rows = []
    for name, d in v.items():
        s = d["slates"].get("i2t", {})
        rows.append({"rule": d.get("label", name), "kept / query (i2t)": _num(s.get("kept_per_query")),
                     "truth of kept (i2t)": _num(s.get("relevance_kept")),
                     "truth of dropped (i2t)": _num(s.get("relevance_dropped")), "RSUM": cell(d["rsum"])})
    return ("Truth = mean graded relevance (fraction of the caption's facts true) of the hard negatives each rule "
            "keeps / drops on the ITC student's test slates.\n\n" + markdown(rows))


def controls_md(retrieval: dict, names: dict[str, str], variants: dict[str, dict]) -> str:
    keys = ["itc", "cprd"] + [k for k, v in variants.items() if v["group"] in ("baselines", "controlled", "levers")]
    return markdown([{"run": names.get(k, k), "R@1 i2t": cell(retrieval[k]["r1_i2t"]),
                      "R@1 t2i": cell(retrieval[k]["r1_t2i"]), "RSUM": cell(retrieval[k]["rsum"]),
                      "seeds": retrieval[k]["rsum"]["n"]} for k in keys if k in retrieval])


def ci(d: Mapping[str, Any] | None, digits: int = 1) -> str:
    """``mean [low, high]`` of a paired difference (95 % CI); ``–`` when missing."""
    if not d or d.get("mean") is None:
        return "–"
    if d.get("ci95") is None:
        return f"{d['mean']:+.{digits}f} ({d.get('n', 1)} seed)"
    return f"{d['mean']:+.{digits}f} [{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]"


def _verdict(f: dict, key: str) -> str:
    v = f["verdicts"][key]
    return f"**Verdict: {v['verdict']}** on this world ({v['reason']}). Rule (docs/protocol.md): {RULES[key]}"


def paired_md(f: dict, names: dict[str, str]) -> str:
    """Every run's test RSUM minus ITC's, paired by seed, both protocols, with per-seed values and convergence."""
    rows = []
    for name, d in f.get("paired", {}).get("semantic", {}).items():
        conv = f.get("convergence", {}).get(name, {})
        rows.append({"run": names.get(name, name), "− ITC, semantic (95% CI)": ci(d),
                     "− ITC, COCO": ci(f["paired"].get("coco", {}).get(name)),
                     "per-seed differences": ", ".join(f"{x:+.1f}" for x in d["values"]),
                     "val. still rising (seeds)": ", ".join(map(str, conv.get("still_rising_seeds", []))) or "none"})
    return markdown(rows)


def _headline_text(f: dict, names: dict[str, str]) -> str:
    h = f["headline"]
    if not h.get("available"):
        return ""
    base = ", ".join(f"{names.get(k, k)} {ci(d)}" for k, d in h["vs_baselines"].items()) or "none ran"
    room = ("The room is not measured in this profile (no oracle run)." if h["room_rsum"] is None
            else f"The oracle is not above ITC here ({h['room_rsum']:+.1f} RSUM): no room to share."
            if h["room_share"] is None
            else f"CPRD's gain is {100 * h['room_share']:.0f}% of the room ({h['room_rsum']:.1f} RSUM).")
    gap = "" if h["gap_closed"] is None else (f" The teacher re-ranker is {h['gap_rsum']:+.1f} RSUM above ITC; CPRD "
                                              f"closes {100 * h['gap_closed']:.0f}% of that gap.")
    return (f"CPRD − ITC, paired by seed: {ci(h['vs_itc'])} RSUM (beats ITC: {'yes' if h['beats_itc'] else 'no'}). "
            f"CPRD − each other method: {base}. {room}{gap} Paper's goal met: "
            f"{'yes' if h['goal_met'] else 'no'}. Rule: {RULES['headline']}")


def _intro(f: dict, profile) -> list[str]:
    teacher = f.get("teacher") or {}
    mp = teacher.get("minimal_pairs", {})
    return [
        f"# Reproducing the paper's findings on the built-in world ({f['profile']} profile)",
        f"Profile `{profile.name}`: {profile.steps} training steps per student, {profile.seeds} seeds for the headline "
        f"table ({profile.extra_seeds} for the other groups); wall time {f['seconds'] / 60:.1f} min. Mean ± std over "
        "seeds; test split; semantic protocol (a hit is any item for which the caption is true) unless marked COCO.",
        "Teacher (committed checkpoint) minimal-pair accuracy on test: "
        + ", ".join(f"{k} {v:.1f}%" for k, v in mp.items())
        + f"; graded Spearman {_num(teacher.get('graded_spearman'), 3)}.",
    ] + _runs_line(f.get("runs")) + (["**Departures from docs/protocol.md in this profile** (decided before its runs): "
          + "; ".join(profile.stated_departures) + "."] if getattr(profile, "stated_departures", ()) else [])


def _runs_line(runs: dict | None) -> list[str]:
    """How many of the planned runs finished, naming the others (a profile stopped early is analysed as it is)."""
    if not runs:
        return []
    missing = runs["not_finished"]
    done = f"{runs['planned'] - len(missing)} of the {runs['planned']} planned runs finished"
    return [done + (": not finished " + ", ".join(f"`{m}`" for m in missing) if missing else "") + "."]


def _finding1(f: dict, figures: dict[str, str], names: dict[str, str]) -> list[str]:
    f1 = f["finding1"]
    spread = f1["scale_spread"]
    scale_lines = [f"- {m}: " + ", ".join(f"{v} {cell(s)}" for v, s in d.items())
                   + (f" (spread / seed std: {_num(spread[m].get('spread_over_std'))})" if m in spread else "")
                   for m, d in f1["scale_check"].items()]
    return ["## Finding 1: score distributions (teacher concentrated, student near normal)",
            distributions_md(f1["distributions"]["i2t"]),
            f"![histograms]({figures.get('finding1_histograms', '')}) ![qq]({figures.get('finding1_qq', '')})",
            "RSUM with each kind of distillation: "
            + ", ".join(f"{names.get(k, k)} {cell(v)}" for k, v in f1["kd_rsum"].items()) + ".",
            "Scale check (same method, teacher scores fed as logits / probabilities / logits ÷ 4):",
            "\n".join(scale_lines), _transfer_text(f1.get("transfer")), _verdict(f, "finding1")]


def _transfer_text(t: dict | None) -> str:
    if not t or not t.get("difference"):
        return ""
    return (f"Transfer, the best ranking method ({t['ranking']}) − the best logit method ({t['logit']}), chosen by "
            f"{t['chosen_by']}: {ci(t['difference'])} test RSUM, paired by seed.")


def intervention_md(iv: dict | None) -> str:
    """Finding 2's arms and contrasts, and the teacher's pairwise accuracy by relevance gap."""
    if not iv or not iv.get("arms"):
        return ""
    arms = markdown([{"negatives / order": a, "test RSUM": cell(d), "per seed": ", ".join(f"{x:.1f}"
                                                                                          for x in d["values"])}
                     for a, d in iv["arms"].items()])
    contrasts = (markdown([{"contrast": k, "RSUM (95% CI)": ci(d)} for k, d in iv["contrasts"].items()])
                 if iv["contrasts"] else "(no contrasts: they need two arms with >= 2 shared seeds)")
    acc = markdown([{"direction": d, "window": w} | {k: (f"{v['accuracy']:.3f} (n={v['pairs']})" if "accuracy" in v
                                                         else f"{100 * v['share']:.0f}% of pairs tied")
                                                      for k, v in by_gap.items()}
                    for d, windows in iv["teacher_accuracy"].items() for w, by_gap in windows.items()])
    return ("The order intervention (ListMLE, steps averaged):\n\n" + arms + "\n\n" + contrasts
            + "\n\nThe teacher's pairwise accuracy against the truth by relevance gap (ties counted apart), "
              "on the ITC student's test slates:\n\n" + acc)


def shared_slates_md(ss: dict | None) -> str:
    """Finding 3 on shared slates: per term, shares and the held-out ITC change (mean [95% CI] over seeds)."""
    if not ss or not ss.get("stats"):
        return ""

    def stat(d):
        if not d:
            return "–"
        return f"{d['mean']:.4f}" + (f" [{d['ci95'][0]:.4f}, {d['ci95'][1]:.4f}]" if d.get("ci95") else "")

    rows = [{"term": t, "neg_up": stat(m.get("neg_up")), "above_pos": stat(m.get("above_pos")),
             "held-out ITC change": stat(m.get("held_out_itc_change")),
             "d loss / d log-scale": stat(m.get("grad_log_scale"))} for t, m in ss["stats"].items()]
    contrasts = markdown([{"contrast": k, "paired (95% CI)": ci(d, 4)} for k, d in ss["contrasts"].items()])
    return ("On shared validation slates (each ITC student's, one per query and seed; itc = the in-batch ITC term "
            "itself, the reference):\n\n" + markdown(rows) + "\n\n" + contrasts)


def _finding2(f: dict, figures: dict[str, str]) -> list[str]:
    f2 = f["finding2"]
    return ["## Finding 2: only the order among hard negatives carries knowledge",
            "Mean per-query Kendall τ-b (n = queries where τ is defined):", agreement_md(f2["agreement"]),
            f"![tau]({figures.get('finding2_tau', '')})",
            "Rank distillation (ListMLE) over which negatives, RSUM: "
            + ", ".join(f"{k} {cell(v)}" for k, v in f2["ablation_rsum"].items()) + ".",
            intervention_md(f2.get("intervention")), f"![intervention]({figures.get('finding2_intervention', '')})",
            _verdict(f, "finding2")]


def _finding3(f: dict, figures: dict[str, str], names: dict[str, str]) -> list[str]:
    f3 = f["finding3"]
    return ["## Finding 3: coordination with ITC",
            "Each method added to ITC at weight 1, RSUM: "
            + ", ".join(f"{names.get(k, k)} {cell(v)}" for k, v in f3["methods_rsum"].items()) + ".",
            "λ sweep for CPRD (RSUM): " + ", ".join(f"λ={float(k):g}: {cell(v)}" for k, v in f3["lambda_sweep"].items())
            + ".",
            "Mean cosine between the gradient of ITC and of each term (fixed probe batch, over training): "
            + ", ".join(f"{k} {v['mean']:+.3f}" for k, v in f3["gradient_cosine"].items()) + ".",
            f"![cos]({figures.get('finding3_gradient_cosine', '')}) ![lambda]({figures.get('finding3_lambda', '')})",
            shared_slates_md(f3.get("shared_slates")), _verdict(f, "finding3")]


DEPENDS_ON = ("the world (contrast-chain-v1: relations are most of what the teacher knows beyond the student)",
              "the student preset (its text tower must encode argument order to use any relational signal)",
              "K = 8 mined negatives from the whole training split (pool 'gallery'), own-caption positives",
              "CPRD's validity rule (top-4 of the teacher's order) and steps-averaged Plackett-Luce terms",
              "λ = 1 and the teacher's logits where the profile has no tuning grid")


def sensitivity_md(f: dict) -> str:
    """For every paired contrast a verdict reads: its CI and how far its nearer bound is from 0 (the smallest shift
    of the mean that would move the interval across 0), then what the verdicts depend on by design."""
    contrasts = {"headline: CPRD − ITC": f.get("headline", {}).get("vs_itc"),
                 "Finding 1 (b): best ranking − best logit": (f["finding1"].get("transfer") or {}).get("difference")}
    for key, part in (("finding2", "intervention"), ("finding3", "shared_slates")):
        found = (f[key].get(part) or {}).get("contrasts", {})
        contrasts |= {f"Finding {key[-1]}: {k}": d for k, d in found.items()}
    rows = [{"contrast": k, "paired (95% CI)": ci(d, 4 if "Finding 3" in k else 1),
             "nearer bound's distance from 0": f"{min(abs(d['ci95'][0]), abs(d['ci95'][1])):.4g}"}
            for k, d in contrasts.items() if d and d.get("ci95")]
    return ("Each verdict turns on the intervals below; a shift of the mean by the nearer bound's distance would move "
            "the interval across 0 (more seeds narrow it). By design the verdicts also depend on: "
            + "; ".join(DEPENDS_ON) + ".\n\n" + markdown(rows))


def tuning_md(tuning: dict | None, names: dict[str, str], used: str = "is what the tables below ran") -> str:
    """The tuning grid of every method (final validation semantic RSUM on the tuning seed), the chosen point in bold
    (``used``: what the text says of it); or why there is none."""
    if not tuning:
        return ("No tuning grid in this profile: every method ran at λ = 1 on the teacher's logits (see the "
                "departures above).")
    rows = []
    for name, t in tuning.items():
        chosen = t["chosen"]
        points = [f"λ {q['lambda']:g}, {q['view']}: {_num(q['val_rsum'], 1)}" for q in t["grid"]]
        grid = "; ".join(f"**{text}**" if q == chosen else text for q, text in zip(t["grid"], points, strict=True))
        rows.append({"method": names.get(name, name), "chosen": f"λ = {chosen['lambda']:g}, teacher {chosen['view']}",
                     "grid (final validation RSUM, semantic)": grid})
    seed = next(iter(tuning.values()))["seed"]
    return (f"Every method's grid on the validation split, one tuning seed ({seed}, never a test seed); the chosen "
            f"point (highest validation RSUM; ties: the smaller λ, then the logits) {used}.\n\n"
            + markdown(rows))


def render_report(f: dict, profile, figures: dict[str, str]) -> str:
    """The whole ``report.md`` of a reproduce run from its ``findings.json`` content ``f``."""
    names = labels(f)
    parts = _intro(f, profile) + [
        f"![world]({figures.get('world_examples', '')})",
        "## Tuning (validation split)", tuning_md(f.get("tuning"), names),
        f"![tuning]({figures['tuning_grid']})" if "tuning_grid" in figures else "",
        "## Headline: retrieval (semantic protocol)", retrieval_md(f["retrieval"], names),
        "COCO protocol (a hit is only the item's own caption / image):", retrieval_md(f["retrieval_coco"], names),
        "Paired by seed (test RSUM minus ITC's; a run whose validation RSUM still rose > 1 % over its last three "
        "evaluations is flagged):", paired_md(f, names),
        _headline_text(f, names), f"![headline]({figures.get('headline_rsum', '')})",
        f"![paired]({figures.get('paired_vs_itc', '')})",
    ]
    parts += _finding1(f, figures, names) + _finding2(f, figures) + _finding3(f, figures, names)
    parts += ["## What would change these verdicts", sensitivity_md(f),
              "## Beyond the paper: which hard negatives should be valid?", validity_md(f["validity"]),
              "## Controls: which teacher order can the student learn?",
              controls_md(f["retrieval"], names, f.get("variants", {})),
              "## Every run (RSUM, semantic)",
              "\n".join(f"- `{name}` ({v['group']}): {cell(f['retrieval'].get(name, {}).get('rsum'))}"
                        for name, v in f.get("variants", {}).items())]
    return "\n\n".join(p for p in parts if p) + "\n"
