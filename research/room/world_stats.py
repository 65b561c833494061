"""Data-only statistics of named worlds (and ad-hoc variants): caption specificity and relation-blind confusers.

    PYTHONPATH=. python research/room/world_stats.py NAME[:field=value,...] ... --out FILE.json
"""
import ast
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from research.room.stats import summary  # noqa: E402
from workbench.data.world import build_split, world_preset  # noqa: E402


def parse(spec: str):
    name, _, rest = spec.partition(":")
    over = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            over[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            over[k] = v
    return replace(world_preset(name), **over)


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = sys.argv[1:]
    out = args[args.index("--out") + 1] if "--out" in args else None
    specs = [a for i, a in enumerate(args) if a != "--out" and (i == 0 or args[i - 1] != "--out")]
    res = {}
    for spec in specs:
        cfg = parse(spec)
        t = time.time()
        row = {}
        for split in ("train", "test"):
            s = build_split(cfg, split)
            row[split] = {k: round(v, 3) for k, v in summary(s).items()}
            row[split]["captions_per_image"] = round(s.num_captions / s.num_images, 2)
            row[split]["max_words"] = max(len(x.split()) for x in s.texts)
        row["seconds"] = round(time.time() - t, 1)
        res[spec] = row
        print(spec, json.dumps(row), flush=True)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
