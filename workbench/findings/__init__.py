"""The paper's three findings, one module each, with their verdict rules, figures, statistics and the report.

- :mod:`~workbench.findings.distributions` — Finding 1: score distributions (concentrated teacher, near-normal
  student), teacher views, per-query softmax shape;
- :mod:`~workbench.findings.agreement` — Finding 2: does the teacher order hard / easy negatives like the truth?
- :mod:`~workbench.findings.coordination` — Finding 3: is a distillation term's gradient coordinated with ITC's?
- :mod:`~workbench.findings.verdicts` — the rules turning numbers into verdicts;
- :mod:`~workbench.findings.stats` — mean / std / n / 95 % CI over seeds (the one helper every table uses);
- :mod:`~workbench.findings.figures`, :mod:`~workbench.findings.plots` — figures; :mod:`~workbench.findings.report`
  — ``report.md``.
"""

from workbench.findings.agreement import agreement_summary, agreement_taus, kendall_tau_rows, pair_statistics
from workbench.findings.coordination import CoordinationProbe, gradient_cosine, gradient_report
from workbench.findings.distributions import describe, per_query_stats, scale_sensitivity, teacher_views
from workbench.findings.plots import FIGURES, image_grid, method_bars, save_figure, world_figure
from workbench.findings.stats import seed_stats, summary
from workbench.findings.verdicts import RULES, headline_verdict, verdicts

__all__ = [
    "FIGURES",
    "RULES",
    "CoordinationProbe",
    "agreement_summary",
    "agreement_taus",
    "describe",
    "gradient_cosine",
    "gradient_report",
    "headline_verdict",
    "image_grid",
    "kendall_tau_rows",
    "method_bars",
    "pair_statistics",
    "per_query_stats",
    "save_figure",
    "scale_sensitivity",
    "seed_stats",
    "summary",
    "teacher_views",
    "verdicts",
    "world_figure",
]
