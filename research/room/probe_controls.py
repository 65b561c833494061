"""Positive / negative controls of the probes on hand-built features (no student). Prints JSON.

    PYTHONPATH=. python research/room/probe_controls.py [WORLD_PRESET]     (default: ambiguous-v1)

The image controls read the stem of the world's committed teacher (the stem its students share)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from research.room.probes import bag_of_words, canonical_roles, probe_embeddings, stem_cell_features  # noqa: E402
from workbench.experiments import WORLD_PRESETS, open_workspace  # noqa: E402

torch.set_num_threads(1)
name = sys.argv[1] if len(sys.argv) > 1 else "ambiguous-v1"
ws = open_workspace(WORLD_PRESETS[name])
w, stem = ws.world, ws.stem
res = {}
for label, pooled in (("stem_cells_concat(+)", False), ("stem_cells_mean(-)", True)):
    res[label] = probe_embeddings(w.train, w.test, stem_cell_features(stem, w.train, pooled),
                                  None, stem_cell_features(stem, w.test, pooled), None)
for label, features, hidden in (("canonical_roles(+)", canonical_roles, 0), ("bag_of_words(-)", bag_of_words, 0),
                                ("bag_of_words_mlp(-)", bag_of_words, 64)):
    res[label] = probe_embeddings(w.train, w.test, None, features(w.train), None, features(w.test), hidden=hidden)
rounded = {k: {p: {m: round(x, 1) for m, x in v.items()} for p, v in r.items()} for k, r in res.items()}
print(json.dumps(rounded, indent=1))
