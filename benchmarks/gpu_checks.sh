#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (run from the repository root).
#
#   OUT=folder GPU_CHECKS_BUDGET_S=540 bash benchmarks/gpu_checks.sh
#
# In order of importance, each step bounded in time so the script ends inside its
# budget and every result so far lands in $OUT (at most a few files: logs and tarballs):
#   1. the machine (GPU, driver, torch) and the CUDA tests (tests/nn/test_nn_cuda.py:
#      training and prediction against the CPU, bf16, checkpoints, a real out-of-memory);
#   2. training speed per preset on CUDA (benchmarks/bench_train_speed.py);
#   3. the evaluation matrix (benchmarks/bench_matrix.py) with $MATRIX_PRESET, $JOBS
#      cells at a time on the one GPU; inputs that need RELION are read from
#      $MATRIX_INPUTS (made beforehand with --prepare on a machine with RELION);
#      TRAIN_SEEDS=0,1,2 trains each cell once per seed (every cell's first seed before
#      any cell's second, so a run cut short by the budget still covers every cell),
#      one network per seed (ensemble=1), network alone with the maps kept, then replays
#      the measured-data step on each seed and on the seeds' average
#      (bench_matrix_replay.py --ensemble: the cpu preset's ensemble of three);
#   4. with VARIANT=KEY=VALUE, the matrix's $VARIANT_SET (default hard) again with that
#      setting changed, when time is left;
#   5. `spisonet demo` with the gpu preset (one epoch: the user's path, timed);
#   6. with TOMO_EPOCHS=N, the tomogram benchmark (benchmarks/bench_tomo.py) with the gpu
#      preset cut to N epochs (needs torch-fourier-slice and torch-ctf: carry their wheels,
#      with torch-grid-utils, torch-image-interpolation and einops).
# Needs mrcfile and starfile importable (a bare GPU image lacks them: carry wheels).
set -u
OUT=${OUT:-gpu_checks_out}
BUDGET=${GPU_CHECKS_BUDGET_S:-540}
MATRIX_SET=${MATRIX_SET:-all}
MATRIX_PRESET=${MATRIX_PRESET:-cpu}
MATRIX_INPUTS=${MATRIX_INPUTS:-.devrun/inputs}
JOBS=${JOBS:-8}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
# a step gets at most $1 seconds and never more than what is left minus a reserve $2
bound() { local want=$1 keep=$2 l; l=$(($(left) - keep)); l=$((l < want ? l : want)); echo $((l < 5 ? 5 : l)); }

{
  echo "## machine $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  nproc

  echo "## 1. CUDA tests"
  timeout "$(bound 150 300)" $PY -m pytest -q -p no:cacheprovider -rs tests/nn/test_nn_cuda.py \
    tests/nn/test_nn_predict.py tests/nn/test_nn_train.py
  echo "rc=$?"

  echo "## 2. training speed on CUDA"
  timeout "$(bound 75 360)" $PY benchmarks/bench_train_speed.py --presets cpu,gpu \
    --devices cuda --steps 10
  echo "rc=$?"

  echo "## 3. matrix: set $MATRIX_SET, preset $MATRIX_PRESET, $JOBS jobs"
  timeout "$(bound 420 100)" $PY benchmarks/bench_matrix.py --set "$MATRIX_SET" \
    --preset "$MATRIX_PRESET" --jobs "$JOBS" --inputs "$MATRIX_INPUTS" --out "$WORK/matrix" \
    ${TRAIN_SEEDS:+--train-seeds "$TRAIN_SEEDS" --override network_only=true \
      --override ensemble=1 --save-maps "$WORK/maps"}
  echo "rc=$?"
  tar -czf "$OUT/matrix.tgz" -C "$WORK" matrix 2>/dev/null
  if [ -n "${TRAIN_SEEDS:-}" ]; then
    echo "## 3b. each seed and the seeds' ensemble, after the measured-data step"
    timeout "$(bound 240 90)" $PY benchmarks/bench_matrix_replay.py --maps "$WORK/maps" \
      --inputs "$MATRIX_INPUTS" --ensemble
    echo "rc=$?"
  fi

  if [ -n "${VARIANT:-}" ] && [ "$(left)" -gt 200 ]; then
    echo "## 4. matrix variant: set ${VARIANT_SET:-hard}, --override $VARIANT"
    timeout "$(bound 400 90)" $PY benchmarks/bench_matrix.py --set "${VARIANT_SET:-hard}" \
      --preset "$MATRIX_PRESET" --jobs "$JOBS" --inputs "$MATRIX_INPUTS" --out "$WORK/variant" \
      --override "$VARIANT"
    echo "rc=$?"
    tar -czf "$OUT/variant.tgz" -C "$WORK" variant 2>/dev/null
  fi
  echo "## 5. spisonet demo --preset gpu --epochs 1"
  timeout "$(bound 150 10)" $PY -m spisonet demo --preset gpu --epochs 1 --out "$WORK/demo"
  echo "rc=$?"
  (cd "$WORK" && tar -czf "$OUT/demo.tgz" --exclude='*.mrc' --exclude='*.pt' demo 2>/dev/null)
  if [ -n "${TOMO_EPOCHS:-}" ] && [ "$(left)" -gt 150 ]; then
    echo "## 6. tomograms: bench_tomo.py --preset gpu, $TOMO_EPOCHS epochs"
    timeout "$(bound 420 15)" $PY benchmarks/bench_tomo.py --preset gpu \
      --set "epochs=$TOMO_EPOCHS" --out "$WORK/tomo"
    echo "rc=$?"
    (cd "$WORK" && tar -czf "$OUT/tomo.tgz" --exclude='*.mrc' --exclude='*.pt' tomo 2>/dev/null)
  fi
  echo "## done after $(($(date +%s) - start)) s"
} 2>&1 | tee "$OUT/log.txt"
