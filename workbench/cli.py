"""Command line: ``python -m workbench <command>`` (also installed as ``workbench``).

    python -m workbench world                          # look at the built-in world, save an example figure
    python -m workbench train-teacher --out DIR        # stem + cross-encoder teacher (minutes on a CPU)
    python -m workbench train --loss itc --loss cprd:weight=1.0,validity=top,m=4 --steps 600 --out DIR
    python -m workbench eval --checkpoint DIR          # re-evaluate a student run (test split)
    python -m workbench teacher-scores --split train --top 16 --checkpoint DIR   # prefill the score store
    python -m workbench reproduce --profile quick --out runs/reproduce           # the three findings, a report
    python -m workbench demo --profile quick --out runs/demo                     # what `make demo` runs

Real data (BLIP ITM teacher, CLIP or BLIP-ITC student, Karpathy splits; see docs/real_data.md):

    python -m workbench train --dataset flickr30k --karpathy-json data/dataset_flickr30k.json \
        --image-root data/flickr30k-images --teacher Salesforce/blip-itm-base-flickr \
        --student openai/clip-vit-base-patch16 --loss itc --loss cprd --out runs/flickr-cprd
    python -m workbench eval --checkpoint runs/flickr-cprd --fusion itm+itc
    accelerate launch --multi_gpu --num_processes 4 -m workbench train --dataset coco ...   # several GPUs

Before a run, `train`, `eval` and `teacher-scores` print the evaluation protocol card and the teacher cost.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from workbench.io import CheckpointError

DEFAULT_STORE = "runs/teacher_scores.sqlite"


def _add_world(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", default="default", choices=["default", "smoke"], help="world size preset")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the built-in world")


def _add_teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default=None,
                   help="built-in: teacher checkpoint folder (train-teacher output; default: the committed one); "
                        "real data: BLIP ITM hub name or local folder (default: Salesforce/blip-itm-base-<dataset>)")
    p.add_argument("--store", default=None,
                   help=f"persistent teacher-score store (SQLite; default: the run's, else {DEFAULT_STORE})")


def _add_data(p: argparse.ArgumentParser, default: str | None = "builtin") -> None:
    """--dataset and the real-data options (Karpathy files, student, limits)."""
    from workbench.models.hf import STUDENT_KINDS

    p.add_argument("--dataset", default=default, choices=["builtin", "flickr30k", "coco"],
                   help="built-in world or a Karpathy split" + ("" if default else " (default: the run's)"))
    p.add_argument("--karpathy-json", default=None, metavar="PATH", help="dataset_flickr30k.json / dataset_coco.json")
    p.add_argument("--image-root", default=None, metavar="PATH", help="image folder (COCO: holds train2014/, val2014/)")
    p.add_argument("--student", default=None, metavar="NAME_OR_PATH",
                   help="real data: CLIP or BLIP hub name or local folder (default: openai/clip-vit-base-patch16)")
    p.add_argument("--student-kind", default=None, choices=list(STUDENT_KINDS), help="real data: default clip")
    p.add_argument("--max-images", type=int, default=None, help="real data: first N images of each split (quick runs)")
    p.add_argument("--restval-as-train", action="store_true",
                   help="COCO: train on train + restval (113,287 images, as BLIP and the paper)")
    p.add_argument("--teacher-cache-images", type=int, default=2048,
                   help="real data: teacher image encodings kept while training (LRU; ~0.9 MB each for BLIP-base)")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k-test", type=int, default=None,
                   help="teacher re-ranks the student's top k_test (default: 16 built-in, 128 Flickr30K, 256 COCO)")
    p.add_argument("--fusion", default="itm", choices=["itm", "itm+itc"],
                   help="re-ranking score: ITM alone, or ITM + ITC as LAVIS (real data)")


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
    _add_data(train)
    _add_teacher(train)
    _add_fit_args(train)
    train.add_argument("--out", required=True, help="run folder (config.json, history.json, metrics.json, checkpoint/)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    train.add_argument("--no-rerank", action="store_true", help="skip the teacher re-ranking evaluation")
    _add_eval(train)

    ev = sub.add_parser("eval", help="re-evaluate a student run folder on the test split")
    ev.add_argument("--checkpoint", required=True, help="a `train` run folder (or its checkpoint/ folder)")
    _add_data(ev, default=None)
    _add_teacher(ev)
    _add_eval(ev)
    ev.add_argument("--split", default="test", choices=["train", "val", "test"], help="real data: evaluated split")
    ev.add_argument("--no-rerank", action="store_true", help="real data: student retrieval only")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda")

    ts = sub.add_parser("teacher-scores", help="fill the teacher-score store for each query's top-M candidates")
    ts.add_argument("--checkpoint", default=None,
                    help="the student run whose top-M candidates get scored (real data: or --student)")
    ts.add_argument("--split", default="train", choices=["train", "val", "test"])
    ts.add_argument("--top", type=int, default=16, help="M: candidates per query and direction")
    ts.add_argument("--positives", default="semantic", choices=["semantic", "coco"],
                    help="built-in world: which pairs are not negatives (match the training runs' setting)")
    _add_data(ts, default=None)
    _add_teacher(ts)
    ts.add_argument("--device", default="auto", help="auto | cpu | cuda")

    rep = sub.add_parser("reproduce", help="the paper's three findings: trainings, analyses, report.md, findings.json")
    rep.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    rep.add_argument("--out", default="runs/reproduce")
    rep.add_argument("--teacher", default=None, help="teacher folder (default: the committed one)")
    rep.add_argument("--workers", type=int, default=None, help="parallel training processes (default: profile's)")
    rep.add_argument("--groups", default=None, help="comma-separated experiment groups (default: the profile's)")

    demo = sub.add_parser("demo", help="what `make demo` runs: `reproduce` on the built-in world (report, figures)")
    demo.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--workers", type=int, default=None, help="parallel training processes (default: profile's)")
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
    if getattr(args, "dataset", "builtin") not in (None, "builtin"):
        from workbench.analysis.real_runs import REAL_FIT_DEFAULTS

        overrides = REAL_FIT_DEFAULTS | overrides
    losses = tuple(LossTerm.parse(t) for t in (args.loss or ["itc"]))
    return profile(args.profile, losses=losses, **overrides)


def _say(*parts) -> None:
    """Print on the main process only (every rank runs the same command under ``accelerate launch``)."""
    from workbench.training.distributed import current

    if current().is_main:
        print(*parts, flush=True)


def _is_main() -> bool:
    from workbench.training.distributed import current

    return current().is_main


def _builtin_teacher(args) -> str:
    from workbench.analysis.runs import DEFAULT_TEACHER

    return args.teacher or str(DEFAULT_TEACHER)


def _real_workspace(args, saved: dict | None = None, device: str = "auto"):
    """The real-data workspace from the command line, falling back on a run's recorded settings (``saved``)."""
    from workbench.analysis.real_runs import open_real_workspace

    saved = saved or {}

    def pick(name: str):
        value = getattr(args, name, None)
        return value if value not in (None, False) else saved.get(name)

    return open_real_workspace(
        pick("dataset"), pick("karpathy_json"), pick("image_root"), teacher=pick("teacher"),
        student=pick("student"), student_kind=pick("student_kind") or "clip", store=pick("store") or DEFAULT_STORE,
        device=device, max_images=pick("max_images"), restval_as_train=bool(pick("restval_as_train")),
        teacher_cache_images=args.teacher_cache_images)


def _check_fusion(args) -> None:
    if getattr(args, "fusion", "itm") != "itm":
        raise ValueError("--fusion itm+itc is available for real data (--dataset flickr30k|coco); the built-in "
                         "world re-ranks by the teacher's ITM logit alone")


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
    from workbench.analysis.protocol import TeacherCost, protocol_card, training_cost
    from workbench.analysis.runs import open_workspace, train_student_run
    from workbench.training.distributed import current

    cfg = fit_config_from_args(args)  # validated (names, hyperparameters) before anything heavy runs
    from workbench.training.loop import build_losses

    build_losses(cfg)
    if args.dataset != "builtin":
        return _train_real(args, cfg)
    _check_fusion(args)
    if args.k_test not in (None, 16):
        raise ValueError("--k-test: the built-in `train` re-ranks the top 16; use `eval --k-test K` afterwards")
    ws = open_workspace(_world_cfg(args), _builtin_teacher(args), args.store or DEFAULT_STORE)
    dist = current()
    if cfg.distill_terms:
        rows = len(ws.teacher_scores().store) if ws.store_path else None
        _say(training_cost(cfg.steps, cfg.batch, dist.world_size, cfg.k, cfg.negatives, rows).text())
    else:
        _say(TeacherCost("training", ()).text())
    _say(protocol_card("builtin", ws.world.test, k_test=16, rerank=not args.no_rerank).text())
    on_step, log, close = _progress(cfg.steps, dist.is_main)
    metrics = train_student_run(ws, cfg, args.out, rerank=not args.no_rerank, resume=args.resume,
                                step_callbacks=(on_step,), callbacks=(log,))
    close()
    if dist.is_main:
        _print_metrics(metrics)
    return 0


def _train_real(args, cfg) -> int:
    from workbench.analysis.real_runs import eval_card, train_real_run
    from workbench.training.distributed import current

    dist = current()
    ws = _real_workspace(args, device=cfg.device)
    card = eval_card(ws, "test", k_test=args.k_test, rerank=not args.no_rerank, fusion=args.fusion)
    _say(card.text())
    on_step, log, close = _progress(cfg.steps, dist.is_main)
    metrics = train_real_run(ws, cfg, args.out, card, resume=args.resume, step_callbacks=(on_step,),
                             callbacks=(log,), announce=_say)
    close()
    if dist.is_main:
        _print_metrics(metrics)
    return 0


def _progress(steps: int, show: bool):
    """(step callback, row callback, close) of a training progress bar opened at the first step (so that what
    the run prints before training comes first); silent when ``show`` is False."""
    from tqdm.auto import tqdm

    bars = []

    def on_step(step: int, row: dict) -> None:
        if not bars:
            bars.append(tqdm(total=steps, initial=step - 1, desc="train", mininterval=1, disable=not show))
        bars[0].update(1)
        bars[0].set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
        if step >= steps:
            bars[0].close()

    def log(step: int, row: dict) -> None:
        if show:
            tqdm.write(_short(row))

    return on_step, log, lambda: bars and bars[0].close()  # closing twice is harmless


def _print_metrics(metrics: dict) -> None:
    for name in ("retrieval", "rerank"):
        for protocol, m in metrics.get(name, {}).items():
            if isinstance(m, dict):
                print(f"{name:9s} {protocol:8s} {_short(m)}")
    if "minimal_pairs" in metrics:
        print("minimal pairs", _short(metrics["minimal_pairs"]))


def _run_folders(checkpoint: str) -> tuple[Path, Path, dict]:
    """(run folder, checkpoint folder, the run's config.json or {}) of a `train` output or its checkpoint/."""
    from workbench.io import read_json

    folder = Path(checkpoint)
    run = folder if (folder / "checkpoint").is_dir() else folder.parent
    ckpt = run / "checkpoint" if (run / "checkpoint").is_dir() else folder
    config = read_json(run / "config.json", what="run config") if (run / "config.json").is_file() else {}
    return run, ckpt, config


def _dataset(args, config: dict) -> str:
    return args.dataset or config.get("real", {}).get("dataset") or "builtin"


def cmd_eval(args) -> int:
    from workbench.analysis.protocol import TeacherCost, protocol_card
    from workbench.analysis.runs import open_workspace, student_metrics
    from workbench.data.world import WorldConfig
    from workbench.io import write_json
    from workbench.training.checkpoint import load_student

    run, ckpt, config = _run_folders(args.checkpoint)
    if _dataset(args, config) != "builtin":
        return _eval_real(args, run, ckpt, config)
    _check_fusion(args)
    k_test = 16 if args.k_test is None else args.k_test
    student = load_student(ckpt)
    ws = open_workspace(WorldConfig(**config.get("world", {})), _builtin_teacher(args), args.store or DEFAULT_STORE)
    test = ws.world.test
    _say(protocol_card("builtin", test, k_test=k_test).text())
    _say(TeacherCost("re-ranking", (("i2t", test.num_images, k_test), ("t2i", test.num_captions, k_test))).text())
    metrics = student_metrics(ws, student, k_test=k_test)
    if (run / "config.json").is_file() and _is_main():
        write_json(run / "metrics.json", metrics)
    if _is_main():
        _print_metrics(metrics)
    return 0


def _eval_real(args, run: Path, ckpt: Path, config: dict) -> int:
    from workbench.analysis.real_runs import eval_card, real_student_metrics
    from workbench.io import write_json
    from workbench.training.checkpoint import load_student

    ws = _real_workspace(args, config.get("real"), device=args.device)
    student = load_student(ckpt, device=ws.model_device)
    card = eval_card(ws, args.split, k_test=args.k_test, rerank=not args.no_rerank, fusion=args.fusion)
    _say(card.text())
    metrics = real_student_metrics(ws, student, card, announce=_say, progress=_is_main())
    if (run / "config.json").is_file() and _is_main():
        write_json(run / f"metrics_{args.split}.json" if args.split != "test" else run / "metrics.json", metrics)
    if _is_main():
        _print_metrics(metrics)
    return 0


def cmd_teacher_scores(args) -> int:
    from workbench.analysis.protocol import TeacherCost
    from workbench.analysis.runs import open_workspace, prefill_store
    from workbench.data.world import WorldConfig
    from workbench.training.checkpoint import load_student

    config = _run_folders(args.checkpoint)[2] if args.checkpoint else {}
    if _dataset(args, config) != "builtin":
        return _teacher_scores_real(args, config)
    if not args.checkpoint:
        raise ValueError("--checkpoint is required on the built-in world (the student whose candidates get scored)")
    _, ckpt, _ = _run_folders(args.checkpoint)
    student = load_student(ckpt)
    ws = open_workspace(WorldConfig(**config.get("world", {})), _builtin_teacher(args), args.store or DEFAULT_STORE)
    split = ws.world.split(args.split)
    rows = len(ws.teacher_scores(args.split).store)
    _say(TeacherCost("store fill", (("i2t", split.num_images, args.top), ("t2i", split.num_captions, args.top)),
                     store_rows=rows).text())
    prefill_store(ws, student, args.split, args.top, args.positives)
    return 0


def _teacher_scores_real(args, config: dict) -> int:
    from workbench.analysis.real_runs import fill_store
    from workbench.training.checkpoint import load_student

    ws = _real_workspace(args, config.get("real"), device=args.device)
    if args.checkpoint:
        student = load_student(_run_folders(args.checkpoint)[1], device=ws.model_device)
    else:
        student = ws.new_student()
    out = fill_store(ws, student, args.split, args.top, announce=_say)
    _say(f"teacher    {out['pairs']:,} pairs scored or found in the store; the main process computed "
         f"{out['computed_pairs']:,}")
    return 0


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
    from workbench.analysis.reproduce import reproduce

    reproduce(args.profile, Path(args.out), teacher_dir=args.teacher, workers=args.workers)
    print(f"report: {Path(args.out) / 'report.md'}   figures: figures/ and {Path(args.out) / 'figures'}")
    return 0


COMMANDS = {"world": cmd_world, "train-teacher": cmd_train_teacher, "train": cmd_train, "eval": cmd_eval,
            "teacher-scores": cmd_teacher_scores, "reproduce": cmd_reproduce, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    distributed = _start_processes(args)
    ok = False
    try:
        code = COMMANDS[args.command](args)
        ok = True
        return code
    except (ValueError, TypeError, KeyError, CheckpointError, FileNotFoundError, OSError) as err:
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        print(f"workbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            from workbench.training.distributed import shutdown

            shutdown(barrier=ok)


def _start_processes(args) -> bool:
    """Join the process group when started by `accelerate launch` / torchrun (train, eval, teacher-scores)."""
    from workbench.training.distributed import init_from_environment, launched_world_size

    if launched_world_size() <= 1:
        return False
    if args.command not in ("train", "eval", "teacher-scores"):
        raise SystemExit(f"workbench {args.command}: runs in one process; only train, eval and teacher-scores "
                         "can be launched on several")
    device = getattr(args, "device", None) or "auto"
    return init_from_environment(device).enabled
