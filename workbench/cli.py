"""Command line: ``python -m workbench <command>`` (also installed as ``workbench``).

    python -m workbench world                          # look at the built-in world, save an example figure
    python -m workbench train-teacher --out DIR        # stem + cross-encoder teacher (minutes on a CPU)
    python -m workbench train --loss itc --loss cprd:weight=1.0,validity=top,m=4 --steps 600 --out DIR
    python -m workbench eval --checkpoint DIR          # re-evaluate a student run (test split) -> DIR/eval_test.json
    python -m workbench teacher-scores --split train --top 16 --checkpoint DIR   # prefill the score store
    python -m workbench reproduce --profile quick --out runs/reproduce           # the three findings, a report
    python -m workbench demo --out runs/demo                                     # what `make demo` runs

Real data (BLIP ITM teacher, CLIP or BLIP-ITC student, Karpathy splits; see docs/real_data.md):

    python -m workbench train --dataset flickr30k --karpathy-json data/dataset_flickr30k.json \
        --image-root data/flickr30k-images --teacher Salesforce/blip-itm-base-flickr \
        --student openai/clip-vit-base-patch16 --loss itc --loss cprd --out runs/flickr-cprd
    python -m workbench eval --checkpoint runs/flickr-cprd --fusion itm+itc
    accelerate launch --multi_gpu --num_processes 4 -m workbench train --dataset coco ...   # several GPUs

Before a run, `train`, `eval` and `teacher-scores` print the evaluation protocol card and the teacher cost, and
`train` checks its run folder, teacher, store and (real data) every image it will read. Nothing is overwritten
without --overwrite; Ctrl-C during training saves a checkpoint of the current step (resume with --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from workbench.io import CheckpointError

# workbench.experiments.plan.PROFILES (a test keeps them equal)
REPRODUCE_PROFILES = ["smoke", "quick", "full", "cpu", "demo"]

DEFAULT_STORE = "runs/teacher_scores.sqlite"


def _add_world(p: argparse.ArgumentParser) -> None:
    from workbench.experiments.workspace import DEFAULT_WORLD, WORLD_PRESETS

    p.add_argument("--world", default="default", choices=list(WORLD_PRESETS),
                   help=f"world preset: default = {DEFAULT_WORLD} (full size), smoke = the same world tiny, or a named "
                        "world at full size")
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
                   help="built-in: a student preset (default: the world's; moments-v1 on the default world); real "
                        "data: CLIP or BLIP hub name or local folder (default: openai/clip-vit-base-patch16)")
    p.add_argument("--student-kind", default=None, choices=list(STUDENT_KINDS), help="real data: default clip")
    p.add_argument("--max-images", type=int, default=None, help="real data: first N images of each split (quick runs)")
    p.add_argument("--restval-as-train", action="store_true",
                   help="COCO: train on train + restval (113,287 images, as BLIP and the paper)")
    p.add_argument("--teacher-cache-images", type=int, default=2048,
                   help="real data: teacher image encodings kept while training (LRU; ~0.9 MB each for BLIP-base)")
    p.add_argument("--check-images", default="header", choices=["header", "full", "skip"],
                   help="real data, before the first step: open every image's header (default), decode every image "
                        "(full: slower, also finds truncated files), or only check that the files exist (skip)")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k-test", type=int, default=None,
                   help="teacher re-ranks the student's top k_test (default: 16 built-in, 128 Flickr30K, 256 COCO)")
    p.add_argument("--fusion", default="itm", choices=["itm", "itm+itc"],
                   help="re-ranking score: ITM alone, or ITM + ITC as LAVIS (real data)")


def _world_cfg(args):
    from dataclasses import replace

    from workbench.experiments.workspace import WORLD_PRESETS

    return replace(WORLD_PRESETS[args.world], seed=args.world_seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    world = sub.add_parser("world", help="describe the built-in world and save an example figure")
    _add_world(world)
    world.add_argument("--n", type=int, default=8, help="examples in the figure")
    world.add_argument("--out", default="runs/world", help="folder of the figure (world_examples.png / .svg)")

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
    train.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (its files only)")
    train.add_argument("--no-rerank", action="store_true", help="skip the teacher re-ranking evaluation")
    _add_eval(train)

    ev = sub.add_parser("eval", help="re-evaluate a student run folder on the test split")
    ev.add_argument("--checkpoint", required=True, help="a `train` run folder (or its checkpoint/ folder)")
    _add_data(ev, default=None)
    _add_teacher(ev)
    _add_eval(ev)
    ev.add_argument("--split", default="test", choices=["train", "val", "test"], help="the evaluated split")
    ev.add_argument("--no-rerank", action="store_true", help="student retrieval only (no teacher re-ranking)")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ev.add_argument("--out", default=None, metavar="FILE",
                    help="where the evaluation goes (default: RUN/eval_<split>.json beside the run's metrics.json)")
    ev.add_argument("--overwrite", action="store_true", help="replace the evaluation file if it exists")

    ts = sub.add_parser("teacher-scores", help="fill the teacher-score store for each query's top-M candidates")
    ts.add_argument("--checkpoint", default=None,
                    help="the student run whose top-M candidates get scored (real data: or --student)")
    ts.add_argument("--split", default="train", choices=["train", "val", "test"])
    ts.add_argument("--top", type=int, default=16, help="M: candidates per query and direction")
    ts.add_argument("--positives", default=None, choices=["semantic", "coco"],
                    help="which pairs are not negatives (match the training runs' setting; default: semantic on the "
                         "built-in world, coco on real data)")
    _add_data(ts, default=None)
    _add_teacher(ts)
    ts.add_argument("--device", default="auto", help="auto | cpu | cuda")

    rep = sub.add_parser("reproduce", help="the paper's three findings: trainings, analyses, report.md, findings.json")
    rep.add_argument("--profile", default="quick", choices=REPRODUCE_PROFILES,
                     help="smoke | quick (every group, 200 steps) | full (the protocol: 2,000 steps, 5 seeds, the "
                          "tuning grid) | cpu (the fair test's largest 2-core size: 2,000 steps, 3 seeds, no grid) | "
                          "demo (the headline at 600 steps, 3 seeds, and the Finding 1 figures)")
    rep.add_argument("--out", default="runs/reproduce")
    rep.add_argument("--teacher", default=None, help="teacher folder (default: the committed one)")
    rep.add_argument("--workers", type=int, default=None, help="parallel training processes (default: profile's)")
    rep.add_argument("--groups", default=None, help="comma-separated experiment groups (default: the profile's)")
    rep.add_argument("--members", type=int, default=None,
                     help="runs trained as one batched model per worker (default: 32 on a GPU, 1 on a CPU)")
    rep.add_argument("--analyse-only", action="store_true",
                     help="train nothing: analyse the runs already finished under --out (the report says which ran)")
    rep.add_argument("--seeds", type=int, default=None,
                     help="seeds of every group (default: the profile's); finished runs are kept, so a larger value "
                          "adds seeds to a profile already run under --out")

    demo = sub.add_parser("demo", help="what `make demo` runs: `reproduce` on the built-in world (report, figures)")
    demo.add_argument("--profile", default="demo", choices=REPRODUCE_PROFILES)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--workers", type=int, default=None, help="parallel training processes (default: profile's)")
    demo.add_argument("--teacher", default=None, help="teacher folder (default: the committed one)")
    demo.add_argument("--members", type=int, default=None,
                      help="runs trained as one batched model per worker (default: 32 on a GPU, 1 on a CPU)")
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
        from workbench.experiments.workspace import REAL_FIT_DEFAULTS

        overrides = REAL_FIT_DEFAULTS | overrides
    losses = tuple(LossTerm.parse(t) for t in (args.loss or ["itc"]))
    return profile(args.profile, losses=losses, **overrides)


def _say(*parts) -> None:
    """Print on the main process only (every rank runs the same command under ``accelerate launch``)."""
    from workbench.distributed import current

    if current().is_main:
        print(*parts, flush=True)


def _is_main() -> bool:
    from workbench.distributed import current

    return current().is_main


def _workspace(args, recorded: dict | None = None, device: str = "auto"):
    """The workspace the command line names, falling back on a run's recorded data settings (``recorded``)."""
    from workbench.experiments.records import workspace_from_record

    dataset = getattr(args, "dataset", None)
    builtin = dataset == "builtin" or (dataset is None and (recorded or {}).get("kind", "builtin") == "builtin")
    world = _world_cfg(args) if builtin and hasattr(args, "world") else None
    return workspace_from_record(
        recorded or {}, dataset=dataset, world_cfg=world, teacher=args.teacher,
        store=args.store or (None if recorded and recorded.get("store") else DEFAULT_STORE), device=device,
        karpathy_json=getattr(args, "karpathy_json", None), image_root=getattr(args, "image_root", None),
        student=getattr(args, "student", None), student_kind=getattr(args, "student_kind", None),
        max_images=getattr(args, "max_images", None), restval_as_train=getattr(args, "restval_as_train", None) or None,
        teacher_cache_images=getattr(args, "teacher_cache_images", None))


def cmd_world(args) -> int:
    from workbench.data.world import build_world
    from workbench.findings.plots import world_figure

    world = build_world(_world_cfg(args))
    for name in ("train", "val", "test"):
        s = world.split(name)
        print(f"{name:5s}: {s.num_images} images, {s.num_captions} captions")
    print("\n".join(f"  {world.test.texts[i]}" for i in range(5)))
    print("figure:", world_figure(world.test, n=args.n, folders=(Path(args.out),))[0])
    return 0


def cmd_train_teacher(args) -> int:
    from tqdm.auto import tqdm

    from workbench.experiments.runs import train_teacher_run
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
    from workbench.distributed import current
    from workbench.experiments.runs import check_run_folder, train_run
    from workbench.training.loop import build_losses

    cfg = fit_config_from_args(args)
    build_losses(cfg)  # names and hyperparameters validated before anything heavy runs
    check_run_folder(args.out, resume=args.resume, overwrite=args.overwrite)  # again (and created) in train_run
    dist = current()
    ws = _workspace(args, device=cfg.device)
    card = ws.protocol_card("test", k_test=args.k_test, rerank=not args.no_rerank, fusion=args.fusion)
    _say(card.text())
    on_step, log, close = _progress(cfg.steps, dist.is_main)
    try:
        metrics = train_run(ws, cfg, args.out, card=card, resume=args.resume, step_callbacks=(on_step,),
                            callbacks=(log,), announce=_say, overwrite=args.overwrite,
                            check_images=args.check_images)
    finally:
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


def cmd_eval(args) -> int:
    from workbench.experiments.records import recorded_data
    from workbench.training.checkpoint import checkpoint_identity, load_student

    run, ckpt, config = _run_folders(args.checkpoint)
    target = Path(args.out) if args.out else (run / f"eval_{args.split}.json" if config else None)
    if target is not None:
        _check_output_file(target, args.overwrite)
    ws = _workspace(args, recorded_data(config), device=args.device)
    student = load_student(ckpt, device=getattr(ws, "model_device", args.device))
    identity = checkpoint_identity(ckpt)
    card = ws.protocol_card(args.split, k_test=args.k_test, rerank=not args.no_rerank, fusion=args.fusion)
    _say(card.text())
    for line in ws.preflight((args.split,), teacher=card.k_test is not None, store_writes=False,
                             images=args.check_images):
        _say(line)
    metrics = ws.evaluate(student, card, announce=_say, progress=_is_main())
    if target is not None and _is_main():
        from workbench.io import write_json

        record = {"split": args.split, "k_test": card.k_test, "fusion": card.fusion, "checkpoint": identity}
        write_json(target, record | metrics)
        _say(f"wrote      {target}")
    if _is_main():
        _print_metrics(metrics)
    return 0


def _check_output_file(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output file that exists (without ``overwrite``) or cannot be written."""
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; expected a file name (e.g. {path / 'eval.json'})")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists: pass --overwrite to replace it, or --out FILE to write elsewhere")
    folder = next(p for p in path.parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {folder} is not a writable folder; pass --out FILE elsewhere")


def cmd_teacher_scores(args) -> int:
    from workbench.experiments.records import recorded_data
    from workbench.experiments.runs import fill_store
    from workbench.training.checkpoint import load_student

    config = _run_folders(args.checkpoint)[2] if args.checkpoint else {}
    ws = _workspace(args, recorded_data(config), device=args.device)
    if args.checkpoint:
        student = load_student(_run_folders(args.checkpoint)[1], device=getattr(ws, "model_device", args.device))
    elif ws.kind == "builtin":
        raise ValueError("--checkpoint is required on the built-in world (the student whose candidates get scored)")
    else:
        student = ws.new_student()
    out = fill_store(ws, student, args.split, args.top, positives=args.positives or ws.primary, announce=_say)
    _say(f"teacher    {out['pairs']:,} pairs scored or found in the store; this process computed "
         f"{out['computed_pairs']:,}")
    return 0


def cmd_reproduce(args) -> int:
    from workbench.checks import check_choice, check_int
    from workbench.experiments.plan import ALL_GROUPS
    from workbench.experiments.reproduce import reproduce

    groups = tuple(args.groups.split(",")) if args.groups else None
    for g in groups or ():
        check_choice("--groups entry", g, ALL_GROUPS)
    _check_workers(args.workers)
    if args.seeds is not None:
        check_int("--seeds", args.seeds, min_value=1)
    reproduce(args.profile, Path(args.out), teacher_dir=args.teacher, workers=args.workers, groups=groups,
              members=args.members, progress=True, analyse_only=args.analyse_only, seeds=args.seeds)
    return 0


def cmd_demo(args) -> int:
    from workbench.experiments.reproduce import reproduce

    _check_workers(args.workers)
    reproduce(args.profile, Path(args.out), teacher_dir=args.teacher, workers=args.workers, members=args.members,
              progress=True)
    print(f"report: {Path(args.out) / 'report.md'}   figures: {Path(args.out) / 'figures'} "
          "(`make figures` copies them to the README's figures/)")
    return 0


def _check_workers(workers: int | None) -> None:
    from workbench.checks import check_int

    if workers is not None:
        check_int("--workers", workers, min_value=1)


COMMANDS = {"world": cmd_world, "train-teacher": cmd_train_teacher, "train": cmd_train, "eval": cmd_eval,
            "teacher-scores": cmd_teacher_scores, "reproduce": cmd_reproduce, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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
        print(f"workbench {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"workbench {args.command}: {_interrupted(stop, argv)}", file=sys.stderr)
        return 130
    finally:
        if distributed:
            from workbench.distributed import shutdown

            shutdown(barrier=ok)


def _one_line(err: BaseException) -> str:
    text = str(err) if not isinstance(err, KeyError) else str(err.args[0] if err.args else err)
    return " ".join(text.split()) or type(err).__name__


def _interrupted(stop: KeyboardInterrupt, argv: list[str]) -> str:
    """One line after Ctrl-C: where the checkpoint is and the command that resumes (training), or just that."""
    import shlex

    from workbench.training.loop import TrainingInterrupted

    if not isinstance(stop, TrainingInterrupted):
        return "interrupted (Ctrl-C)"
    again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    return (f"interrupted after step {stop.step}; checkpoint saved in {stop.checkpoint}; resume with: "
            f"python -m workbench {shlex.join(again)}")


def _start_processes(args) -> bool:
    """Join the process group when started by `accelerate launch` / torchrun (train, eval, teacher-scores)."""
    from workbench.distributed import init_from_environment, launched_world_size

    if launched_world_size() <= 1:
        return False
    if args.command not in ("train", "eval", "teacher-scores"):
        raise SystemExit(f"workbench {args.command}: runs in one process; only train, eval and teacher-scores "
                         "can be launched on several")
    device = getattr(args, "device", None) or "auto"
    return init_from_environment(device).enabled
