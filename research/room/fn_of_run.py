"""False-negative rate of gallery-mined top-8 slates (whole training split, own captions excluded) for saved runs."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from research.room.common import false_negative_rate, world_of  # noqa: E402
from research.room.probe_student import load  # noqa: E402
from workbench.evaluation.embed import embed_split  # noqa: E402

torch.set_num_threads(1)
for run in sys.argv[1:]:
    student, world_name = load(Path(run))
    w = world_of(world_name)
    img, txt = embed_split(student, w.train)
    print(run, world_name, json.dumps({k: round(v, 1) for k, v in false_negative_rate(img, txt, w.train).items()}),
          flush=True)
