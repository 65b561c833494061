#!/usr/bin/env bash
# The one prepared GPU check (results in BENCHMARKS.md). Runs from the repository root on a CUDA machine whose
# python3 has torch, transformers, accelerate, pytest, scipy, pandas, matplotlib, seaborn, safetensors and tqdm:
#
#   OUT=/tmp/gpu BUDGET=420 bash benchmarks/gpu_check.sh
#
# In parallel, each process on one CPU thread: (1) the CUDA-marked tests, which run the tiny-`transformers`
# BLIP/CLIP pipeline and the blocked retrieval/mining on CUDA with bf16; (2) the teacher recipe for seeds 0 and 2
# (is relation learning robust to the seed? the committed teacher is seed 1); (3) `reproduce --profile full`
# (69 student runs of 1,500 steps) with 8 worker processes sharing the GPU. Each has BUDGET seconds; finished
# student runs are kept even if the whole profile does not finish (reproduce resumes them).
# Everything lands in $OUT/gpu.tgz (no checkpoints or stores), $OUT/teachers.tgz and $OUT/gpu_log.txt.
set -u
OUT=${OUT:-/tmp/gpu}
mkdir -p "$OUT/work/teachers"
# One CPU thread per process: the first version of this script started 16 processes with torch's default thread
# count on 16 cores and nothing but one student finished in 470 s (see BENCHMARKS.md).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LOG="$OUT/gpu_log.txt"
BUDGET=${BUDGET:-420}
{
  date; nvidia-smi -L
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
  ( /usr/bin/time -f "gpu tests: %e s wall" timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider \
      tests/test_retrieval.py tests/test_mining.py tests/test_hf.py > "$OUT/work/gpu_tests.log" 2>&1 ) &
  for s in 0 2; do
    ( /usr/bin/time -f "teacher seed $s: %e s wall" timeout "$BUDGET" python3 -m workbench train-teacher --device cuda \
        --seed "$s" --out "$OUT/work/teachers/seed$s" > "$OUT/work/teachers/seed$s.log" 2>&1 ) &
  done
  ( /usr/bin/time -f "reproduce full: %e s wall" timeout "$BUDGET" python3 -m workbench reproduce --profile full \
      --out "$OUT/work/reproduce_full" --workers 8 > "$OUT/work/reproduce_full.log" 2>&1 ) &
  wait
  tail -n 4 "$OUT/work/gpu_tests.log" "$OUT"/work/teachers/seed*.log "$OUT/work/reproduce_full.log"
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv
  date
} > "$LOG" 2>&1
tar czf "$OUT/gpu.tgz" -C "$OUT/work" --exclude='checkpoint' --exclude='*.pt' --exclude='*.sqlite*' \
  --exclude='model.safetensors' . && tar czf "$OUT/teachers.tgz" -C "$OUT/work" teachers
ls -la "$OUT"
