"""Positive / negative controls of the probes on hand-built features (no student). Prints JSON."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from research.room.common import get_stem, get_world  # noqa: E402
from research.room.probes import bag_of_words, canonical_roles, probe_embeddings, stem_cell_features  # noqa: E402

torch.set_num_threads(1)
name = sys.argv[1] if len(sys.argv) > 1 else "ambiguous-v1"
w = get_world(name)
stem = get_stem(name, w)
res = {}
for label, pooled in (("stem_cells_concat(+)", False), ("stem_cells_mean(-)", True)):
    res[label] = probe_embeddings(w.train, w.test, stem_cell_features(stem, w.train, pooled),
                                  None, stem_cell_features(stem, w.test, pooled), None)
res["canonical_roles(+)"] = probe_embeddings(w.train, w.test, None, canonical_roles(w.train), None, canonical_roles(w.test))
res["bag_of_words(-)"] = probe_embeddings(w.train, w.test, None, bag_of_words(w.train), None, bag_of_words(w.test))
res["bag_of_words_mlp(-)"] = probe_embeddings(w.train, w.test, None, bag_of_words(w.train), None, bag_of_words(w.test), hidden=64)
print(json.dumps({k: {p: {m: round(x, 1) for m, x in v.items()} for p, v in r.items()} for k, r in res.items()}, indent=1))
