"""The main job on the built-in world (what ``make demo`` runs): ITC students, the teacher re-ranking them, and the
privileged near-miss control, over several seeds; a results table (markdown/CSV/JSON) and figures.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from workbench.analysis.report import flat_metrics, markdown_table, results_figure, summarise, world_figure
from workbench.analysis.runs import DEFAULT_TEACHER, WORLD_PRESETS, open_workspace, train_student_run
from workbench.io import atomic_write_text, write_json
from workbench.training.config import profile

TABLE_METRICS = ["R@1 i2t", "R@1 t2i", "R@5 i2t", "R@5 t2i", "RSUM", "COCO R@1 i2t", "COCO R@1 t2i", "COCO RSUM",
                 "MP swap_colour", "MP swap_shape", "MP flip_relation", "MP change_attribute"]
METHODS = {  # table row -> FitConfig overrides
    "ITC student": {},
    "ITC + near-miss negatives (privileged control)": {"near_misses": True},
}


def run_demo(profile_name: str, out: Path, seeds: int = 3, teacher_dir: str | Path | None = None) -> dict:
    """Train and evaluate every method for ``seeds`` seeds; write ``out/results.{md,csv,json}`` and figures."""
    start = time.time()
    world_cfg = WORLD_PRESETS["smoke" if profile_name == "smoke" else "default"]
    ws = open_workspace(world_cfg, teacher_dir or DEFAULT_TEACHER, out / "teacher_scores.sqlite")
    world_figure(ws.world.test, folders=("figures", out))
    rows: dict[str, list[dict]] = {name: [] for name in METHODS}
    rows["teacher re-ranking the ITC student (k_test=16)"] = []
    for name, overrides in METHODS.items():
        for seed in range(seeds):
            cfg = replace(profile(profile_name, seed=seed), **overrides)
            slug = name.split(" (")[0].replace(" ", "_").replace("+", "plus").lower()
            print(f"[demo] {name}, seed {seed}", flush=True)
            metrics = train_student_run(ws, cfg, out / "runs" / f"{slug}_seed{seed}", rerank=name == "ITC student")
            rows[name].append(flat_metrics(metrics))
            if "rerank" in metrics:
                rows["teacher re-ranking the ITC student (k_test=16)"].append(flat_metrics(metrics, "rerank"))
    return write_results(ws, rows, out, time.time() - start)


def write_results(ws, rows: dict[str, list[dict]], out: Path, seconds: float) -> dict:
    summary = summarise({k: v for k, v in rows.items() if v})
    teacher_mp = ws.eval_sets("test")[0]
    from workbench.analysis.evaluate import evaluate_teacher

    teacher = evaluate_teacher(ws.teacher, ws.world.test, teacher_mp, ws.eval_sets("test")[1])
    table = markdown_table(summary, TABLE_METRICS)
    tmp = " | ".join(f"{k} {v:.1f}" for k, v in teacher["minimal_pairs"].items())
    text = (f"# Demo results (test split, {len(next(iter(rows.values())))} seeds)\n\n{table}\n\n"
            f"Teacher minimal-pair accuracy (test): {tmp}; graded Spearman {teacher['graded_spearman']:.3f}\n\n"
            f"Wall time: {seconds / 60:.1f} min\n")
    atomic_write_text(out / "results.md", text)
    summary.to_csv(out / "results.csv")
    write_json(out / "results.json", {"rows": rows, "teacher": teacher, "seconds": seconds})
    results_figure(summary, ["R@1 i2t", "R@1 t2i", "COCO R@1 i2t", "COCO R@1 t2i"], "results_r1", ("figures", out))
    print(text)
    return {"summary": summary, "teacher": teacher}
