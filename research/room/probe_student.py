"""Linear (and MLP) probes on a trained student's frozen image and text embeddings.

    PYTHONPATH=. python research/room/probe_student.py RUN_DIR [RUN_DIR ...] --out FILE.json

RUN_DIR: a research/room/run.py folder (student.pt + config.json) or a `python -m workbench train` folder (its world
rebuilt from the ``data.world`` entry of its config.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from research.room.common import get_stem, world_of  # noqa: E402
from research.room.probes import probe_embeddings  # noqa: E402
from workbench.evaluation.embed import embed_split  # noqa: E402
from workbench.models.student import DualEncoder, StudentConfig  # noqa: E402


def load(run: Path) -> tuple[DualEncoder, str | dict]:
    if (run / "student.pt").is_file():
        cfg = json.loads((run / "config.json").read_text())
        world = cfg["args"]["world"]
        student = DualEncoder(StudentConfig.from_dict(cfg["student"]), stem=get_stem(world))
        student.load_state_dict(torch.load(run / "student.pt"))
        return student.eval(), world
    from workbench.training.checkpoint import load_student

    return load_student(run / "checkpoint"), json.loads((run / "config.json").read_text())["data"]["world"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--mlp", type=int, default=128, help="hidden units of the MLP probe (0: linear only)")
    a = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    for run in a.runs:
        student, world_name = load(Path(run))
        w = world_of(world_name)
        tr = [e.float() for e in embed_split(student, w.train)]
        te = [e.float() for e in embed_split(student, w.test)]
        res = {"linear": probe_embeddings(w.train, w.test, tr[0], tr[1], te[0], te[1])}
        if a.mlp:
            res["mlp"] = probe_embeddings(w.train, w.test, tr[0], tr[1], te[0], te[1], hidden=a.mlp)
        results[run] = res
        print(run, json.dumps({k: {p_: round(v["acc"], 1) for p_, v in r.items()} for k, r in res.items()}),
              flush=True)
    Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
