"""Markdown rendering of ``findings.json`` into ``report.md`` (numbers only from the findings; no claims added)."""

from __future__ import annotations

from typing import Any

from workbench.analysis.verdicts import RULES

LABELS = {"itc": "ITC only", "kl": "ITC + KL", "mse": "ITC + MSE (standardised)", "ranknet": "ITC + RankNet",
          "listnet": "ITC + ListNet", "listmle": "ITC + ListMLE", "cprd": "ITC + CPRD (top-4)",
          "mined_itc": "ITC + InfoNCE on the mined slates (no teacher)",
          "negclip": "ITC + caption near-misses (NegCLIP-style, no teacher)",
          "teacher_rerank": "teacher re-ranking the ITC student (k_test=16)"}


def _ms(d: dict | None, digits: int = 1) -> str:
    if not d:
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _num(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def retrieval_md(table: dict[str, dict], order: list[str]) -> str:
    cols = ["r1_i2t", "r5_i2t", "r1_t2i", "r5_t2i", "rsum"]
    header = "| method | " + " | ".join(c.replace("_", " ") for c in cols) + " | seeds |"
    lines = [header, "|---" * (len(cols) + 2) + "|"]
    for name in order + sorted(set(table) - set(order)):
        if name in table:
            row = table[name]
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(_ms(row[c]) for c in cols)
                         + f" | {row['rsum']['n']} |")
    return "\n".join(lines)


def distributions_md(dist: dict) -> str:
    lines = ["| scores | group | n | skewness | excess kurtosis | mass near extremes | Shapiro W |", "|---" * 7 + "|"]
    for view, groups in dist.items():
        if view == "per_query":
            continue
        for group in ("positive", "hard", "easy", "all"):
            d = groups.get(group)
            if d:
                lines.append(f"| {view} | {group} | {d['n']} | {_num(d.get('skewness'))} | "
                             f"{_num(d.get('excess_kurtosis'))} | {_num(d.get('mass_extremes'))} | "
                             f"{_num(d.get('shapiro_w'), 3)} |")
    return "\n".join(lines)


def agreement_md(agreement: dict) -> str:
    lines = ["| direction | window | teacher vs student | teacher vs truth | student vs truth |", "|---" * 5 + "|"]
    for d, a in agreement.items():
        for w in ("hard", "easy"):
            cells = [f"{_num(a[w][p]['mean'])} (n={a[w][p]['n']})" for p in
                     ("teacher_student", "teacher_relevance", "student_relevance")]
            lines.append(f"| {d} | {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(f: dict, key: str) -> str:
    ok = f["verdicts"][key]
    return f"**Verdict: {'reproduced' if ok else 'not reproduced'}** on this world (rule: {RULES[key]})"


def render_report(f: dict, profile, figures: dict[str, str], runs: dict) -> str:
    order = ["itc", "kl", "mse", "ranknet", "listnet", "listmle", "cprd", "mined_itc", "negclip", "teacher_rerank"]
    f1, f2, f3, h = f["finding1"], f["finding2"], f["finding3"], f["headline"]
    teacher = f.get("teacher") or {}
    mp = teacher.get("minimal_pairs", {})
    parts = [
        f"# Reproducing the paper's findings on the built-in world ({f['profile']} profile)",
        f"Profile `{profile.name}`: {profile.steps} training steps per student, {profile.seeds} seeds for the headline "
        f"table ({profile.extra_seeds} for the other groups); wall time {f['seconds'] / 60:.1f} min. Mean ± std over "
        "seeds; test split; semantic protocol (a hit is any item for which the caption is true) unless marked COCO.",
        "Teacher (committed checkpoint) minimal-pair accuracy on test: "
        + ", ".join(f"{k} {v:.1f}%" for k, v in mp.items())
        + f"; graded Spearman {_num(teacher.get('graded_spearman'), 3)}.",
        f"![world]({figures.get('world_examples', '')})",
        "## Headline: retrieval (semantic protocol)", retrieval_md(f["retrieval"], order),
        "COCO protocol (a hit is only the item's own caption / image):", retrieval_md(f["retrieval_coco"], order),
    ]
    if h.get("available"):
        parts.append(
            f"CPRD − ITC: {h['gain_rsum']:+.1f} RSUM (seed std {h['std']:.1f}; beats ITC by > 2 std: "
            f"{'yes' if h['beats_itc_by_2std'] else 'no'}). The teacher re-ranker is {h['gap_rsum']:+.1f} RSUM above "
            f"ITC; CPRD closes {100 * (h['gap_closed'] or 0):.0f}% of that gap (target ≥ 30%: "
            f"{'met' if h['closes_30pct'] else 'not met'}).")
    parts += [f"![headline]({figures.get('headline_rsum', '')})",
              "## Finding 1: score distributions (teacher concentrated, student near normal)",
              distributions_md(f1["distributions"]["i2t"]),
              f"![histograms]({figures.get('finding1_histograms', '')}) ![qq]({figures.get('finding1_qq', '')})",
              "RSUM with each kind of distillation: " + ", ".join(f"{LABELS.get(k, k)} {_ms(v)}"
                                                                  for k, v in f1["kd_rsum"].items()) + ".",
              "Scale check (same method, teacher scores fed as logits / probabilities / logits ÷ 4):",
              "\n".join(f"- {m}: " + ", ".join(f"{v} {_ms(s)}" for v, s in d.items())
                        + (f" (spread / seed std: {_num(f1['scale_spread'].get(m, {}).get('spread_over_std'))})"
                           if m in f1["scale_spread"] else "") for m, d in f1["scale_check"].items()),
              _verdict(f, "finding1"),
              "## Finding 2: only the order among hard negatives carries knowledge",
              "Mean per-query Kendall τ-b (n = queries where τ is defined):", agreement_md(f2["agreement"]),
              f"![tau]({figures.get('finding2_tau', '')})",
              "Rank distillation (ListMLE) over which negatives, RSUM: "
              + ", ".join(f"{k} {_ms(v)}" for k, v in f2["ablation_rsum"].items()) + ".",
              _verdict(f, "finding2"),
              "## Finding 3: coordination with ITC",
              "Each method added to ITC at weight 1, RSUM: "
              + ", ".join(f"{LABELS.get(k, k)} {_ms(v)}" for k, v in f3["methods_rsum"].items()) + ".",
              "λ sweep for CPRD (RSUM): "
              + ", ".join(f"λ={k:g}: {_ms(v)}" for k, v in f3["lambda_sweep"].items()) + ".",
              "Mean cosine between the gradient of ITC and of each term (fixed probe batch, over training): "
              + ", ".join(f"{k} {v['mean']:+.3f}" for k, v in f3["gradient_cosine"].items()) + ".",
              f"![cos]({figures.get('finding3_gradient_cosine', '')}) ![lambda]({figures.get('finding3_lambda', '')})",
              _verdict(f, "finding3"),
              "## Beyond the paper: which hard negatives should be valid?",
              validity_md(f["validity"]),
              ]
    parts += ["## Every run (RSUM, semantic)", "\n".join(
        f"- `{name}`: {_ms(f['retrieval'].get(name, {}).get('rsum'))}" for name in sorted(runs))]
    return "\n\n".join(p for p in parts if p) + "\n"


def validity_md(v: dict) -> str:
    lines = ["| rule | kept / query (i2t) | truth of kept (i2t) | truth of dropped (i2t) | RSUM |", "|---" * 5 + "|"]
    for name, d in v.items():
        s = d["slates"].get("i2t", {})
        lines.append(f"| {name} | {_num(s.get('kept_per_query'))} | {_num(s.get('relevance_kept'))} | "
                     f"{_num(s.get('relevance_dropped'))} | {_ms(d['rsum'])} |")
    return ("Truth = mean graded relevance (fraction of the caption's facts true) of the hard negatives each rule "
            "keeps / drops on the ITC student's test slates.\n\n" + "\n".join(lines))
