#!/usr/bin/env bash
# The one prepared GPU check (results in BENCHMARKS.md). Runs from the repository root on a CUDA machine whose
# python3 has torch, transformers, accelerate, scipy, pandas, matplotlib, seaborn, safetensors and tqdm:
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# In parallel: (1) the teacher recipe over 3 seeds (robustness of relation learning; timing per teacher);
# (2) `reproduce --profile full` on CUDA with bf16 autocast, 6 worker processes. Everything lands in $OUT/gpu.tgz,
# $OUT/teachers.tgz and $OUT/gpu_log.txt. (The CUDA-marked tests ran in a separate, earlier call:
# `python3 -m pytest -q -m gpu tests/test_retrieval.py tests/test_mining.py tests/test_hf.py`.)
set -u
OUT=${OUT:-/tmp/gpu}
mkdir -p "$OUT/work/teachers"
# One CPU thread per process: the first version of this script started 16 processes with torch's default thread
# count on 16 cores and nothing but one student finished in 470 s (see BENCHMARKS.md).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WORKBENCH_DEBUG=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
LOG="$OUT/gpu_log.txt"
BUDGET=${BUDGET:-480}
{
  date; nvidia-smi -L
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
  for s in 0 1 2; do
    ( /usr/bin/time -f "teacher seed $s: %e s wall" timeout "$BUDGET" python3 -m workbench train-teacher --device cuda \
        --seed "$s" --out "$OUT/work/teachers/seed$s" > "$OUT/work/teachers/seed$s.log" 2>&1 ) &
  done
  ( /usr/bin/time -f "reproduce full: %e s wall" timeout "$BUDGET" python3 -m workbench reproduce --profile full \
      --out "$OUT/work/reproduce_full" --workers 6 > "$OUT/work/reproduce_full.log" 2>&1 ) &
  wait
  tail -n 3 "$OUT"/work/teachers/seed*.log "$OUT/work/reproduce_full.log"
  date
} > "$LOG" 2>&1
tar czf "$OUT/gpu.tgz" -C "$OUT/work" --exclude='*.pt' --exclude='*.sqlite*' --exclude='model.safetensors' . \
  && tar czf "$OUT/teachers.tgz" -C "$OUT/work" teachers
ls -la "$OUT"
