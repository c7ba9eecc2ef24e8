#!/usr/bin/env bash
# The GPU check: one prepared script for one device call of at most 10 minutes (docs/benchmarks.md).
#
#   1. the card (nvidia-smi) and the software;
#   2. absa's GPU tests: pytest -m gpu;
#   3. side by side in one process each (benchmarks/throughput.py: plain PyTorch loop vs absa's Engine, interleaved,
#      medians), plus one Lanczos probe (seconds, HVPs):
#      ResNet-18 at 224 px on synthetic data, batch 256, bf16 + channels_last (absa's CUDA defaults), profiled;
#      ResNet-20 on GPU-resident CIFAR-shaped synthetic data, batch 512, bf16, profiled, and the plain loop with one
#      synchronisation per step (--synced-plain: what the engine's one per step costs);
#      ResNet-20 on GPU-resident CIFAR-shaped data with CIFAR's crop-and-flip done on the GPU, batch 512, bf16, and
#      where its step's time goes (--profile: launches, synchronisations, device busy time per step);
#      ResNet-20, batch 128, fp32 NCHW (the ANCHORS.md fp32 row);
#   4. with the rest of BUDGET_S (default 560 s from the start): issue 13's paper schedule, absa vs fixed on
#      CIFAR-sized shapes (benchmarks/gpu_paper_schedule.sh), cut at its deadline.
#
# Every part has its own time limit; a part that fails or runs out of time is recorded and the next one still runs;
# the exit status says whether all passed. The tables go to stdout and to $OUT/gpu_check.md ($OUT: the folder the
# device tool copies back; a temporary folder when unset).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --smoke    # here, on the CPU: tiny sizes, checks that every part runs
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=()
DEVICE=cuda
THREADS=4  # CPU threads for the data side of each step; the GPU does the rest
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=(--smoke)
  DEVICE=cpu
  THREADS=1
fi
PY=${PYTHON:-python3}  # the device image's python3 holds PyTorch; here: PYTHON=.venv/bin/python
OUT_DIR=${OUT:-$(mktemp -d)}
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/gpu_check.md
LOG=$OUT_DIR/gpu_check.log
: >"$REPORT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# omegaconf is the one absa dependency the device image lacks: carried as a wheel in .whl/ (docs/benchmarks.md).
if ! "$PY" -c "import omegaconf" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/absa-site .whl/*.whl
  export PYTHONPATH=/tmp/absa-site:$PYTHONPATH
fi

FAILED=()
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
  local started=$SECONDS
  if timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"; then
    echo "=== $name: ok in $((SECONDS - started))s" | tee -a "$LOG" "$REPORT"
  else
    echo "=== $name: FAILED (status ${PIPESTATUS[0]}) after $((SECONDS - started))s" | tee -a "$LOG" "$REPORT"
    FAILED+=("$name")
  fi
}

{ echo "## Card"; echo; echo '```'
  if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  else
    echo "no nvidia-smi (a smoke run on $(uname -m))"
  fi
  timeout 60 "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())" || true
  echo '```'; echo; } | tee -a "$REPORT"

BENCH=("$PY" benchmarks/throughput.py --device "$DEVICE" --threads "$THREADS" --probe --out "$REPORT"
       ${SMOKE[@]+"${SMOKE[@]}"})
part "pytest -m gpu" 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors tests
part resnet18-224 120 "${BENCH[@]}" --title "ResNet-18, 224 px, synthetic" --model resnet18 --image-size 224 \
  --num-classes 1000 --data synthetic --batch 256 --steps 20 --repeats 5 --epoch-samples 1281167 \
  --profile "$OUT_DIR/profile_resnet18.txt"
part resnet20-synthetic 70 "${BENCH[@]}" --title "ResNet-20, CIFAR-shaped, synthetic" --model resnet20 \
  --data synthetic --batch 512 --steps 50 --repeats 5 --epoch-samples 50000 --synced-plain \
  --profile "$OUT_DIR/profile_resnet20_synthetic.txt"
part resnet20-augmented 90 "${BENCH[@]}" --title "ResNet-20, CIFAR-shaped, crop+flip on the device" \
  --model resnet20 --data augmented --batch 512 --steps 50 --repeats 5 --epoch-samples 50000 \
  --profile "$OUT_DIR/profile_resnet20.txt"
part resnet20-fp32 60 "${BENCH[@]}" --title "ResNet-20, CIFAR-shaped, fp32 NCHW, batch 128 (the ANCHORS fp32 row)" \
  --model resnet20 --data augmented --batch 128 --steps 50 --repeats 5 --amp off --channels-last off \
  --epoch-samples 50000
# Last, with what is left of the call (BUDGET_S from the script's start, default 560 s): issue 13's paper schedule,
# absa vs fixed, 3 seeds side by side (benchmarks/gpu_paper_schedule.sh; it stops at its deadline and keeps what ran).
LEFT=$((${BUDGET_S:-560} - SECONDS - 30))  # 30 s for the report and the tar after the runs' deadline
if ((LEFT >= 60)); then
  part paper-schedule $((LEFT + 30)) bash benchmarks/gpu_paper_schedule.sh "$LEFT" ${SMOKE[@]+"${SMOKE[@]}"}
else
  echo "=== paper-schedule: skipped, ${LEFT}s left of BUDGET_S" | tee -a "$LOG" "$REPORT"
fi

if ((${#FAILED[@]})); then
  echo "gpu_check: FAILED parts: ${FAILED[*]} (log: $LOG)" | tee -a "$REPORT"
  exit 1
fi
echo "gpu_check: all parts passed (report: $REPORT)" | tee -a "$REPORT"
