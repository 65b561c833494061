"""Minimal-pair accuracy of a saved run on the TRAIN split's own captions vs the test split (memorised or learned?)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from research.room.common import world_of  # noqa: E402
from research.room.probe_student import load  # noqa: E402
from workbench.data.perturbations import minimal_pairs  # noqa: E402
from workbench.evaluation.evaluate import student_scorer  # noqa: E402
from workbench.evaluation.minimal_pairs import minimal_pair_accuracy  # noqa: E402

torch.set_num_threads(1)
for run in sys.argv[1:]:
    student, world_name = load(Path(run))
    w = world_of(world_name)
    out = {s: minimal_pair_accuracy(student_scorer(student, w.split(s)), minimal_pairs(w.split(s), per_kind=500))
           for s in ("train", "test")}
    print(run, json.dumps({s: {k: round(v, 1) for k, v in r.items()} for s, r in out.items()}), flush=True)
