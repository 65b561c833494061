"""Memory of a command's whole process tree over its run: the sum over every process (main, workers, their
children), sampled every second, as RSS (pages counted once per process: shared libraries count in each) and as PSS
(shared pages split between the processes sharing them: what the tree really takes), plus the largest process.

    python benchmarks/process_memory.py --out mem.json -- make demo
    python benchmarks/process_memory.py -- python -m workbench reproduce --profile quick --out runs/q

Prints the peaks, the wall time and where in the run the peak fell; ``--out`` keeps the time series.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pss(proc: psutil.Process) -> int:
    """Proportional set size in bytes (Linux smaps_rollup; falls back to RSS)."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def sample(root: psutil.Process) -> dict:
    rss, pss_total, largest, count = 0, 0, 0, 0
    for proc in tree(root):
        try:
            r = proc.memory_info().rss
        except psutil.Error:
            continue
        rss, pss_total, largest, count = rss + r, pss_total + pss(proc), max(largest, r), count + 1
    return {"t": time.time(), "rss": rss, "pss": pss_total, "largest_rss": largest, "processes": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--out", default=None, help="write the samples as JSON")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.time()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    samples = []
    while child.poll() is None:
        samples.append(sample(root))
        time.sleep(args.every)
    wall = time.time() - start
    gb = 1e9
    peak = max(samples, key=lambda s: s["pss"]) if samples else None
    print(f"[memory] command: {' '.join(command)}  (exit {child.returncode}, {wall / 60:.1f} min wall)")
    if peak is not None:
        print(f"[memory] process tree peak: PSS {peak['pss'] / gb:.2f} GB, RSS summed "
              f"{max(s['rss'] for s in samples) / gb:.2f} GB, largest process "
              f"{max(s['largest_rss'] for s in samples) / gb:.2f} GB; PSS peak at {peak['t'] - start:.0f} s of "
              f"{wall:.0f} s with {peak['processes']} processes")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command, "wall_seconds": wall, "exit": child.returncode, "samples": samples}, f)
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
