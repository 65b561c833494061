"""Command line: ``python -m workbench <command>`` (also installed as ``workbench``).

    python -m workbench world                          # look at the built-in world, save an example figure
    python -m workbench train-teacher --out DIR        # stem + cross-encoder teacher (minutes on a CPU)
    python -m workbench train --loss itc --loss cprd:weight=1.0,validity=top,m=4 --steps 600 --out DIR
    python -m workbench eval --checkpoint DIR          # re-evaluate a student run (test split)
    python -m workbench teacher-scores --split train --top 16 --checkpoint DIR   # prefill the score store
    python -m workbench reproduce --profile quick --out runs/reproduce           # the three findings, a report
    python -m workbench demo --profile quick --out runs/demo                     # what `make demo` runs
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from workbench.io import CheckpointError


def _add_world(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", default="default", choices=["default", "smoke"], help="world size preset")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the built-in world")


def _add_teacher(p: argparse.ArgumentParser) -> None:
    from workbench.analysis.runs import DEFAULT_TEACHER

    p.add_argument("--teacher", default=str(DEFAULT_TEACHER), help="teacher checkpoint folder (train-teacher output)")
    p.add_argument("--store", default="runs/teacher_scores.sqlite", help="persistent teacher-score store (SQLite)")


def _world_cfg(args):
    from dataclasses import replace

    from workbench.analysis.runs import WORLD_PRESETS

    return replace(WORLD_PRESETS[args.world], seed=args.world_seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    world = sub.add_parser("world", help="describe the built-in world and save an example figure")
    _add_world(world)
    world.add_argument("--n", type=int, default=8, help="examples in the figure")

    teacher = sub.add_parser("train-teacher", help="pretrain the stem and train the cross-encoder teacher")
    _add_world(teacher)
    teacher.add_argument("--out", required=True, help="output checkpoint folder")
    from workbench.models.teacher import TeacherConfig
    from workbench.training.teacher import TeacherTrainConfig

    for f in fields(TeacherTrainConfig):
        teacher.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    for f in fields(TeacherConfig):
        if f.name != "stem":
            kind = _bool if isinstance(f.default, bool) else type(f.default)
            teacher.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help="model size")
    teacher.add_argument("--device", default="auto", help="auto | cpu | cuda")

    train = sub.add_parser("train", help="train a student with ITC and any registered distillation losses")
    _add_world(train)
    _add_teacher(train)
    _add_fit_args(train)
    train.add_argument("--out", required=True, help="run folder (config.json, history.json, metrics.json, checkpoint/)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    train.add_argument("--no-rerank", action="store_true", help="skip the teacher re-ranking evaluation")

    ev = sub.add_parser("eval", help="re-evaluate a student run folder on the test split")
    ev.add_argument("--checkpoint", required=True, help="a `train` run folder (or its checkpoint/ folder)")
    _add_teacher(ev)
    ev.add_argument("--k-test", type=int, default=16, help="teacher re-ranks the student's top k_test")

    ts = sub.add_parser("teacher-scores", help="fill the teacher-score store for each query's top-M candidates")
    ts.add_argument("--checkpoint", required=True, help="the student run whose top-M candidates get scored")
    ts.add_argument("--split", default="train", choices=["train", "val", "test"])
    ts.add_argument("--top", type=int, default=16, help="M: candidates per query and direction")
    _add_teacher(ts)

    rep = sub.add_parser("reproduce", help="the paper's three findings: trainings, analyses, report.md, findings.json")
    rep.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    rep.add_argument("--out", default="runs/reproduce")
    rep.add_argument("--teacher", default=None, help="teacher folder (default: the committed one)")
    rep.add_argument("--workers", type=int, default=None, help="parallel training processes (default: profile's)")
    rep.add_argument("--groups", default=None, help="comma-separated experiment groups (default: the profile's)")

    demo = sub.add_parser("demo", help="the main job: students, teacher re-ranking, figures and a results table")
    demo.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--seeds", type=int, default=3)
    demo.add_argument("--teacher", default=None, help="teacher folder (default: the committed one)")
    return parser


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    from workbench.training.config import FitConfig

    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"], help="preset of the fields below")
    p.add_argument("--loss", action="append", default=None,
                   help="loss term NAME[:weight=W,key=value,...]; repeat for several (default: itc)")
    for f in fields(FitConfig):
        if f.name in ("losses",):
            continue
        kind = type(f.default)
        if kind is bool:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_bool, default=None, metavar="BOOL")
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def fit_config_from_args(args):
    from workbench.training.config import FitConfig, LossTerm, profile

    overrides = {f.name: getattr(args, f.name) for f in fields(FitConfig)
                 if f.name != "losses" and getattr(args, f.name, None) is not None}
    losses = tuple(LossTerm.parse(t) for t in (args.loss or ["itc"]))
    return profile(args.profile, losses=losses, **overrides)


def cmd_world(args) -> int:
    from workbench.analysis.report import world_figure
    from workbench.data.world import build_world

    world = build_world(_world_cfg(args))
    for name in ("train", "val", "test"):
        s = world.split(name)
        print(f"{name:5s}: {s.num_images} images, {s.num_captions} captions")
    print("\n".join(f"  {world.test.texts[i]}" for i in range(5)))
    print("figure:", world_figure(world.test, n=args.n)[0])
    return 0


def cmd_train_teacher(args) -> int:
    from tqdm.auto import tqdm

    from workbench.analysis.runs import train_teacher_run
    from workbench.models.teacher import TeacherConfig
    from workbench.training.teacher import TeacherTrainConfig

    cfg = TeacherTrainConfig(**{f.name: getattr(args, f.name) for f in fields(TeacherTrainConfig)})
    model_cfg = TeacherConfig(**{f.name: getattr(args, f.name) for f in fields(TeacherConfig) if f.name != "stem"})
    metrics = train_teacher_run(_world_cfg(args), cfg, model_cfg, args.out,
                                progress=lambda r: tqdm(r, desc="teacher", mininterval=2),
                                callbacks=[lambda step, row: tqdm.write(_short(row))], device=args.device)
    print(_short(metrics["test"]["minimal_pairs"]), f"train {metrics['train_seconds']:.0f}s")
    return 0


def _short(row: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def cmd_train(args) -> int:
    from tqdm.auto import tqdm

    from workbench.analysis.runs import open_workspace, train_student_run

    cfg = fit_config_from_args(args)  # validated (names, hyperparameters) before anything heavy runs
    from workbench.training.loop import build_losses

    build_losses(cfg)
    ws = open_workspace(_world_cfg(args), args.teacher, args.store)
    bar = tqdm(total=cfg.steps, desc="train", mininterval=1)

    def on_step(step: int, row: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)

    metrics = train_student_run(ws, cfg, args.out, rerank=not args.no_rerank, resume=args.resume,
                                step_callbacks=(on_step,), callbacks=(lambda s, r: tqdm.write(_short(r)),))
    bar.close()
    _print_metrics(metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    for name in ("retrieval", "rerank"):
        for protocol, m in metrics.get(name, {}).items():
            if isinstance(m, dict):
                print(f"{name:9s} {protocol:8s} {_short(m)}")
    if "minimal_pairs" in metrics:
        print("minimal pairs", _short(metrics["minimal_pairs"]))


def cmd_eval(args) -> int:
    from workbench.analysis.runs import open_workspace, student_metrics
    from workbench.data.world import WorldConfig
    from workbench.io import read_json, write_json
    from workbench.training.checkpoint import load_student

    folder = Path(args.checkpoint)
    run = folder if (folder / "checkpoint").is_dir() else folder.parent
    ckpt = run / "checkpoint" if (run / "checkpoint").is_dir() else folder
    student = load_student(ckpt)
    config = read_json(run / "config.json", what="run config") if (run / "config.json").is_file() else {}
    ws = open_workspace(WorldConfig(**config.get("world", {})), args.teacher, args.store)
    metrics = student_metrics(ws, student, k_test=args.k_test)
    if (run / "config.json").is_file():
        write_json(run / "metrics.json", metrics)
    _print_metrics(metrics)
    return 0


def cmd_teacher_scores(args) -> int:
    from workbench.analysis.evaluate import embed_split
    from workbench.analysis.runs import open_workspace
    from workbench.data.world import WorldConfig
    from workbench.io import read_json
    from workbench.scores.mining import mine_hard_negatives, relation_exclude
    from workbench.training.checkpoint import load_student

    run = Path(args.checkpoint)
    student = load_student(run / "checkpoint" if (run / "checkpoint").is_dir() else run)
    config = read_json(run / "config.json", what="run config") if (run / "config.json").is_file() else {}
    ws = open_workspace(WorldConfig(**config.get("world", {})), args.teacher, args.store)
    split = ws.world.split(args.split)
    scores = ws.teacher_scores(args.split)
    img, txt = embed_split(student, split)
    relation = split.relations()["semantic"]
    for direction, (q, c) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        mined = mine_hard_negatives(q, c, args.top, positives=relation_exclude(relation, direction))
        rows = torch_arange(len(q))[:, None].expand_as(mined.indices)
        pairs = (rows, mined.indices) if direction == "i2t" else (mined.indices, rows)
        keep = mined.valid.flatten()
        scores(pairs[0].flatten()[keep], pairs[1].flatten()[keep])
        print(direction, scores.stats.postfix())
    scores.close()
    return 0


def torch_arange(n: int):
    import torch

    return torch.arange(n)


def cmd_reproduce(args) -> int:
    from workbench.analysis.plan import ALL_GROUPS
    from workbench.analysis.reproduce import reproduce
    from workbench.checks import check_choice

    groups = tuple(args.groups.split(",")) if args.groups else None
    for g in groups or ():
        check_choice("--groups entry", g, ALL_GROUPS)
    reproduce(args.profile, Path(args.out), teacher_dir=args.teacher, workers=args.workers, groups=groups)
    return 0


def cmd_demo(args) -> int:
    from workbench.analysis.demo import run_demo

    run_demo(args.profile, Path(args.out), seeds=args.seeds, teacher_dir=args.teacher)
    return 0


COMMANDS = {"world": cmd_world, "train-teacher": cmd_train_teacher, "train": cmd_train, "eval": cmd_eval,
            "teacher-scores": cmd_teacher_scores, "reproduce": cmd_reproduce, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, KeyError, CheckpointError, FileNotFoundError) as err:
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        print(f"workbench {args.command}: error: {err}", file=sys.stderr)
        return 2
