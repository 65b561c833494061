"""Batched students vs the same runs one after another, the dense teacher's cost, and the GPU projections.

Parts (all measured side by side in one process, interleaved, medians; CPU times are process CPU seconds, which
other jobs on a shared machine disturb less than wall time; both are printed):

- ``cpu``: M distillation students of the headline's setting (gallery pool, K = 8, COCO positives; CPRD / KL /
  ListMLE / ListNet / RankNet, several seeds) trained as one batched model vs the same M trained one after another
  with ``fit``, warm teacher-score store for both (a first batched pass fills it). Throughput = members x steps / s.
- ``phases``: where a member-step's process CPU time goes (gallery refresh, mining, teacher scores, backward, the
  rest), a run alone vs M batched (cProfile), and the bound this puts on any batched speed-up: the phases each
  member must do on its own data.
- ``overhead``: the same comparison where a step is launch-bound rather than compute-bound (the smoke world,
  batch 16, K = 4): M batched vs ONE run alone (throughput ratio); the regime of a GPU, where one run leaves the
  device mostly idle.
- ``ops``: operators dispatched per step (torch profiler): a run alone vs M batched. On a launch-bound device the
  step time follows the operator count, which gives the GPU projection ``M x ops(alone) / ops(batched)`` and, from the
  H200's measured 24 ms a step alone, the projected step time of the batched model.
- ``dense``: the dense teacher's scoring rate on this CPU (length-trimmed fusion) vs the store path's pair scorer,
  its FLOPs per pair (FlopCounterMode), and the projection for the 6,000 x 30,000 training grid (memory, time here,
  time on an H200 at an assumed sustained rate, stated).

    python benchmarks/batched.py --part all [--members 8] [--steps 100] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from workbench.experiments import WORLD_PRESETS, open_workspace
from workbench.experiments.plan import BASE, METHODS
from workbench.training.batched import Member, fit_batched
from workbench.training.config import profile
from workbench.training.loop import fit

H200_STEP_SECONDS = 0.024  # a 1,500-step ITC run alone took 36.6 s on the H200 (BENCHMARKS.md, issue 7)
METHOD_CYCLE = ("cprd", "kl", "listmle", "listnet", "ranknet", "mse")


def configs(members: int, steps: int, world: str) -> list:
    """``members`` headline-style distillation configs: methods cycled, seeds counted up."""
    sizes = {"batch": 16, "k": 4} if world == "smoke" else {}
    base = replace(profile("smoke" if world == "smoke" else "quick", steps=steps, eval_every=10**6),
                   **{**BASE, **sizes})
    return [replace(base, seed=i // len(METHOD_CYCLE), losses=METHODS[METHOD_CYCLE[i % len(METHOD_CYCLE)]][0])
            for i in range(members)]


def _members(ws, cfgs, scores) -> list[Member]:
    out = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        out.append(Member(cfg, ws.new_student(), scores))
    return out


def _timed(action) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def batched_vs_alone(ws, cfgs, repeats: int, alone: str) -> dict[str, float]:
    """Medians of interleaved repeats: batched model vs the runs one after another (``alone="all"``) or vs the first
    run alone (``alone="one"``). Returns throughputs (member-steps per CPU second and per wall second)."""
    scores = ws.teacher_scores()
    fit_batched(_members(ws, cfgs, scores), ws.world)  # warms the store (and the allocator) for both

    def sequential() -> None:
        for cfg in cfgs if alone == "all" else cfgs[:1]:
            torch.manual_seed(cfg.seed)
            fit(cfg, ws.world, ws.new_student(), teacher_scores=scores)

    times: dict[str, list[tuple[float, float]]] = {"batched": [], "alone": []}
    for _ in range(repeats):
        times["batched"].append(_timed(lambda: fit_batched(_members(ws, cfgs, scores), ws.world)))
        times["alone"].append(_timed(sequential))
    steps = cfgs[0].steps
    work = {"batched": len(cfgs) * steps, "alone": (len(cfgs) if alone == "all" else 1) * steps}
    out = {}
    for key, runs in times.items():
        out[f"{key}_wall"] = work[key] / statistics.median(t[0] for t in runs)
        out[f"{key}_cpu"] = work[key] / statistics.median(t[1] for t in runs)
    return out


def count_ops(action) -> int:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        action()
    def top_level(event) -> bool:  # an operator the dispatcher launched itself, not one inside another operator
        return event.name.startswith("aten::") and (event.cpu_parent is None
                                                    or not event.cpu_parent.name.startswith("aten::"))

    return sum(1 for e in prof.events() if top_level(e))


def part_ops(ws, members: int) -> None:
    scores = ws.teacher_scores()
    one, many = configs(1, 3, "smoke"), configs(members, 3, "smoke")
    fit_batched(_members(ws, many, scores), ws.world)
    short = [replace(c, steps=1) for c in one]
    alone = count_ops(lambda: fit(one[0], ws.world, _members(ws, one, scores)[0].student, teacher_scores=scores))
    alone -= count_ops(lambda: fit(short[0], ws.world, _members(ws, short, scores)[0].student, teacher_scores=scores))
    batched = count_ops(lambda: fit_batched(_members(ws, many, scores), ws.world))
    batched -= count_ops(lambda: fit_batched(_members(ws, [replace(c, steps=1) for c in many], scores), ws.world))
    alone, batched = alone / 2, batched / 2  # per step (two steps between the 3-step and the 1-step runs)
    ratio = members * alone / batched
    step_ms = H200_STEP_SECONDS * batched / alone * 1e3
    print(f"[ops] operators per step: one run alone {alone:,.0f}; {members} batched {batched:,.0f} "
          f"({batched / members:,.0f} per member)")
    print(f"[ops] PROJECTION for a launch-bound GPU: {members} batched vs one alone = {ratio:.1f}x throughput "
          f"(target 15x: {'met' if ratio >= 15 else 'not met'}); step time ~{step_ms:.0f} ms from the H200's "
          f"{H200_STEP_SECONDS * 1e3:.0f} ms alone")


PHASES = {  # phase -> the functions whose cumulative time it is (both trainers call the same ones)
    "gallery refresh": ("embed_split_rows",),
    "mining": ("mine_hard_negatives", "sample_easy_negatives"),
    "teacher scores": ("__call__@teacher_scores.py", "__call__@dense.py"),
    "backward": ("run_backward",),
}


def phase_seconds(action) -> dict[str, float]:
    """Process CPU seconds of ``action`` by phase (:data:`PHASES`; "encoders, losses, optimiser" = the rest), from
    cProfile's cumulative times (its overhead inflates Python-heavy code a little, alike in both trainers)."""
    import cProfile
    import pstats

    prof = cProfile.Profile(time.process_time)
    prof.runcall(action)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive, tottime, cumtime, callers)
    total = max(v[3] for v in stats.values())
    out = {}
    for phase, names in PHASES.items():
        out[phase] = sum(v[3] for (file, _, name), v in stats.items()
                         if any(n in (name, f"{name}@{Path(file).name}") or f"'{n}'" in name for n in names))
    out["encoders, losses, optimiser"] = total - sum(out.values())
    out["total"] = total
    return out


def part_phases(ws, members: int, steps: int) -> None:
    """Where a member-step's time goes, alone vs batched, and the most batching could gain: the phases that are
    per member by nature (its own gallery re-embedded, its own gallery searched) bound the ratio from above."""
    cfgs = configs(members, steps, "default")
    scores = ws.teacher_scores()
    def run_alone() -> None:
        fit(cfgs[0], ws.world, _members(ws, cfgs[:1], scores)[0].student, teacher_scores=scores)

    fit_batched(_members(ws, cfgs, scores), ws.world)  # warm store and allocator for both: a member mines slightly
    run_alone()  # other pairs than its run alone (float rounding), so each warms its own
    alone = phase_seconds(run_alone)
    batched = phase_seconds(lambda: fit_batched(_members(ws, cfgs, scores), ws.world))
    print(f"[phases] default world, {cfgs[0].losses[-1].name} & co., gallery pool (refresh every "
          f"{cfgs[0].refresh_every}), {steps} steps; ms of process CPU time per member-step:")
    print(f"[phases] {'phase':30s} {'alone':>8s} {'batched':>8s}")
    for phase in alone:
        print(f"[phases] {phase:30s} {1e3 * alone[phase] / steps:8.1f} {1e3 * batched[phase] / (members * steps):8.1f}")
    per_member = alone["gallery refresh"] + alone["mining"]
    print(f"[phases] gallery refresh + mining are {100 * per_member / alone['total']:.0f} % of a run alone and do "
          f"not shrink when batched (each member embeds and searches its own gallery): even with everything else "
          f"free, batching gains at most {alone['total'] / per_member:.2f}x here")


def part_dense(ws) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.data.world import WorldConfig, build_world
    from workbench.scores.dense import DenseTeacherScores

    teacher = ws.teacher
    small = build_world(WorldConfig(n_train=40, n_val=10, n_test=10)).train  # 40 x 200 = 8,000 pairs
    rates: dict[str, list[float]] = {"dense": [], "store": []}
    img = torch.arange(small.num_images).repeat_interleave(small.num_captions)
    cap = torch.arange(small.num_captions).repeat(small.num_images)
    for _ in range(3):
        dense = DenseTeacherScores(teacher, small, dtype=torch.float32, image_block=16)
        rates["dense"].append(dense.build().pairs / dense.info.seconds)
        scorer = teacher.pair_scorer(small)
        scorer(img[:1], cap[:1])  # encodings outside the timing
        wall = time.perf_counter()
        scorer(img, cap)
        rates["store"].append(len(img) / (time.perf_counter() - wall))
    dense_rate, store_rate = (statistics.median(v) for v in rates.values())
    enc = teacher.encode_image(small.images[:1])
    txt, pad = teacher.encode_text(small.tokens)
    with FlopCounterMode(display=False) as counter:
        teacher.itm(enc.expand(len(txt), -1, -1), txt, pad)
    flops = counter.get_total_flops() / len(txt)
    split = ws.world.train
    pairs = split.num_images * split.num_captions
    grid = DenseTeacherScores(teacher, split)
    print(f"[dense] this CPU, 1 thread: dense (length-trimmed) {dense_rate:,.0f} pairs/s vs the store's pair scorer "
          f"{store_rate:,.0f} pairs/s ({dense_rate / store_rate:.2f}x); {flops / 1e6:.2f} MFLOP a pair (padded)")
    print(f"[dense] training grid {split.num_images:,} x {split.num_captions:,} = {pairs / 1e6:.0f}M pairs: "
          f"{grid.memory_bytes() / 1e6:.0f} MB in bf16; on this CPU {pairs / dense_rate / 3600:.1f} h (NOT run: "
          "projection from the rate above)")
    for tflops in (50, 200):
        print(f"[dense] PROJECTION on an H200 at a sustained {tflops} TFLOP/s: {pairs * flops / (tflops * 1e12):.0f} s "
              "for the grid (padded FLOPs; trimming removes about a third)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["cpu", "phases", "overhead", "ops", "dense", "all"])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--overhead-members", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("cpu", "phases", "all"):
            ws = open_workspace(WORLD_PRESETS["default"], store_path=Path(tmp) / "default.sqlite")
        if args.part in ("cpu", "all"):
            r = batched_vs_alone(ws, configs(args.members, args.steps, "default"), args.repeats, "all")
            for unit in ("cpu", "wall"):
                ratio = r[f"batched_{unit}"] / r[f"alone_{unit}"]
                print(f"[cpu] default world, {args.members} students x {args.steps} steps, {unit} time: batched "
                      f"{r[f'batched_{unit}']:.2f} vs one after another {r[f'alone_{unit}']:.2f} member-steps/s: "
                      f"{ratio:.2f}x (target 3x: {'met' if ratio >= 3 else 'not met'})")
        if args.part in ("phases", "all"):
            part_phases(ws, args.members, args.steps)
        ws = open_workspace(WORLD_PRESETS["smoke"], store_path=Path(tmp) / "smoke.sqlite")
        if args.part in ("overhead", "all"):
            m = args.overhead_members
            r = batched_vs_alone(ws, configs(m, 20, "smoke"), args.repeats, "one")
            for unit in ("cpu", "wall"):
                ratio = r[f"batched_{unit}"] / r[f"alone_{unit}"]
                print(f"[overhead] smoke world, batch 16: {m} batched vs one run alone, {unit} time: "
                      f"{r[f'batched_{unit}']:.1f} vs {r[f'alone_{unit}']:.1f} member-steps/s = {ratio:.1f}x")
        if args.part in ("ops", "all"):
            part_ops(ws, args.overhead_members)
        if args.part in ("dense", "all"):
            part_dense(open_workspace(WORLD_PRESETS["default"], store_path=None))


if __name__ == "__main__":
    main()
