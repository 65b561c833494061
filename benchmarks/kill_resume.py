"""SIGKILL a CLI training run at random moments, resume it each time, and compare the end with an uninterrupted run.

With ``--checkpoint-every 1`` a large share of the run is spent writing checkpoints, so random kills land between a
checkpoint's files too. After every kill this prints what the checkpoint folder held (a whole checkpoint and its
step, or an interrupted swap), then resumes with ``--resume``; at the end it checks that the run's history and test
metrics equal the uninterrupted run's and that no temporary or staging folder is left.

    python benchmarks/kill_resume.py [--kills 30] [--steps 100] [--seed 0] [--out /tmp/kill_resume]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from workbench.io import CheckpointError, read_json, verify_manifest

REPO = Path(__file__).resolve().parents[1]


def command(out: str, store: str, steps: int, resume: bool) -> list[str]:
    return [sys.executable, "-m", "workbench", "train", "--world", "smoke", "--profile", "smoke", "--steps",
            str(steps), "--eval-every", "10", "--checkpoint-every", "1", "--loss", "itc", "--loss",
            "cprd:validity=top,m=2", "--no-rerank", "--store", store, "--out", out] + (["--resume"] if resume else [])


def env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def state_of(run: Path) -> str:
    """What the run's checkpoint folder holds right after a kill."""
    ckpt, parts = run / "checkpoint", []
    for folder in (ckpt, run / "checkpoint.new", run / "checkpoint.old"):
        if folder.is_dir():
            try:
                verify_manifest(folder)
                parts.append(f"{folder.name}: whole, step {read_json(folder / 'config.json')['step']}")
            except (CheckpointError, FileNotFoundError, ValueError, KeyError):
                parts.append(f"{folder.name}: partial")
    temporaries = [p.name for p in run.rglob("*.tmp")]
    return "; ".join(parts or ["no checkpoint yet"]) + (f"; {len(temporaries)} temporaries" if temporaries else "")


def kill_loop(work: Path, steps: int, kills: int, rng: random.Random) -> tuple[int, list[str]]:
    """Start, kill at a random moment once training runs, resume; until ``kills`` kills or the run finishes."""
    run, done, log = work / "run", 0, []
    while True:
        resume = (run / "checkpoint").is_dir() or (run / "checkpoint.new").is_dir()
        errors = work / "stderr.txt"
        with errors.open("w") as err:
            proc = subprocess.Popen(command(str(run), str(work / "s.sqlite"), steps, resume), env=env(), cwd=work,
                                    stdout=subprocess.DEVNULL, stderr=err)
        if done < kills:
            while "train:" not in errors.read_text() and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                done += 1
                log.append(f"kill {done:2d}: {state_of(run)}")
                continue
        code = proc.wait()
        if code != 0:
            raise SystemExit(f"the resumed run failed ({code}):\n{errors.read_text()[-3000:]}")
        return done, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill_resume"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "ref").mkdir(parents=True)
    (args.out / "killed").mkdir()
    start = time.time()
    ref = subprocess.run(command("run", "s.sqlite", args.steps, False), env=env(), cwd=args.out / "ref",
                         capture_output=True, text=True)
    if ref.returncode:
        raise SystemExit(ref.stderr[-3000:])
    kills, log = kill_loop(args.out / "killed", args.steps, args.kills, random.Random(args.seed))
    print("\n".join(log))
    a, b = args.out / "ref" / "run", args.out / "killed" / "run"
    same_history = read_json(a / "history.json") == read_json(b / "history.json")
    ma, mb = read_json(a / "metrics.json"), read_json(b / "metrics.json")
    left = [str(p.relative_to(b)) for p in b.rglob("*") if p.name.endswith((".tmp", ".new", ".old"))]
    print(f"{kills} kills; history identical: {same_history}; test RSUM {mb['rsum']:.2f} (uninterrupted "
          f"{ma['rsum']:.2f}); retrieval identical: {ma['retrieval'] == mb['retrieval']}; leftovers: {left or 'none'}; "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
