#!/usr/bin/env bash
# The prepared GPU check of the batched trainer and the dense teacher (issue 12; not yet run: no device was lent to
# the session that wrote it). From the repository root on a CUDA machine, within one 15-minute device loan:
#
#   OUT=/tmp/gpu12 bash benchmarks/gpu_batched.sh
#
# In order, one CPU thread per process:
#   1. the batched-trainer and dense-teacher tests on CUDA (tests/test_batched.py, tests/test_dense.py);
#   2. benchmarks/batched.py --part overhead,ops on the GPU: 32 batched vs one run alone (the 15x target), and
#      the operator counts behind the projection in BENCHMARKS.md;
#   3. a 1,000-step ITC + CPRD run as a notebook cell runs it (train_run; dense teacher; the 10 s target);
#   4. reproduce --profile full with 32 runs per batched model in 2 workers (the 10-minute target), BUDGET s.
# Everything lands in $OUT/gpu12_log.txt and $OUT/gpu12.tgz (no checkpoints or stores).
set -u
OUT=${OUT:-/tmp/gpu12}
mkdir -p "$OUT/work"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LOG="$OUT/gpu12_log.txt"
BUDGET=${BUDGET:-600}
{
  date; nvidia-smi -L
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  /usr/bin/time -f "tests: %e s wall" timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_batched.py \
      tests/test_dense.py
  /usr/bin/time -f "overhead+ops: %e s wall" timeout 240 python3 benchmarks/batched.py --part overhead --repeats 2
  timeout 120 python3 benchmarks/batched.py --part ops
  /usr/bin/time -f "notebook-cell run: %e s wall" timeout 120 python3 - <<'EOF'
import time
from workbench.experiments import open_workspace, train_run
from workbench.experiments.plan import CPRD, ITC
from workbench.training.config import profile
ws = open_workspace()
start = time.time()
scores = ws.teacher_scores("train")
scores.build() if hasattr(scores, "build") else None
built = time.time() - start
cfg = profile("quick", steps=1000, eval_every=1000, losses=(ITC, CPRD))
metrics = train_run(ws, cfg, None, rerank=False)
print(f"dense grid {built:.1f} s, 1,000-step CPRD run {metrics['train_seconds']:.1f} s, RSUM {metrics['rsum']:.1f}")
EOF
  /usr/bin/time -f "reproduce full: %e s wall" timeout "$BUDGET" python3 -m workbench reproduce --profile full \
      --members 32 --workers 2 --out "$OUT/work/reproduce_full" > "$OUT/work/reproduce_full.log" 2>&1
  tail -n 5 "$OUT/work/reproduce_full.log"
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv
  date
} > "$LOG" 2>&1
tar czf "$OUT/gpu12.tgz" -C "$OUT/work" --exclude='checkpoint' --exclude='*.pt' --exclude='*.sqlite*' . ; ls -la "$OUT"
