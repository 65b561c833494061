"""Print a run's learning curve (validation RSUM and minimal pairs per eval) from its log or history.json."""
import json
import sys
from pathlib import Path

KEYS = ("val_semantic_rsum", "val_coco_rsum", "val_mp_flip_relation", "val_mp_swap_colour", "val_mp_swap_shape",
        "elapsed_s")
for run in sys.argv[1:]:
    hist = Path(run) / "history.json"
    if hist.is_file():
        rows = json.loads(hist.read_text())
    else:
        rows = [json.loads(line) for line in Path(run + ".log").read_text(errors="ignore").splitlines()
                if line.startswith("{")]
    print(run)
    for i, r in enumerate(rows):
        step = r.get("step", (i + 1) * 500)
        shown = (f"{k.replace('val_', '').replace('mp_', '')}={r[k]:.1f}" for k in KEYS if k in r)
        print(f"  {step:>6}", " ".join(shown))
