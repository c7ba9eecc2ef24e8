#!/usr/bin/env bash
# Issue 13 on the GPU: the paper's whole C1 schedule (presets/c1-cifar10.yaml: 90 epochs, LR 0.02 ×0.2 at 30 and 60,
# no weight decay, no augmentation, policy.duration 10, cap 16,384) at CIFAR-10's sizes (50,000 / 10,000 samples of
# 32 px, 10 classes) on the embedded `shapes` set, since CIFAR-10 cannot be downloaded. absa (the paper presets'
# defaults: the reference's rule and probe) against fixed, seeds 0-2, all six runs side by side, one
# benchmarks/iterations.py process each, 2 torch threads each, on one GPU.
#
# It stops at its deadline whatever is left (a run cut there is reported, not a failure); every finished run's JSON, every run's log and epoch records (also of
# the runs the deadline cut) go into $OUT/paper_schedule.tar, and the tables into $OUT/paper_schedule.md and stdout:
# the merged iterations.py tables of the finished runs, then one line per run from its epoch records (the batch per
# epoch and the growths by cause so far), so a cut run still says where its growths came from.
#
#   bash benchmarks/gpu_paper_schedule.sh SECONDS          # on the GPU machine, from the repository root
#   bash benchmarks/gpu_paper_schedule.sh 120 --smoke      # here, on the CPU: 3 epochs of 2,048 samples, 1 seed
set -euo pipefail
cd "$(dirname "$0")/.."

DEADLINE=${1:?usage: gpu_paper_schedule.sh SECONDS [--smoke]}
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
mkdir -p "$OUT_DIR" "$WORK/logs" "$WORK/results" "$WORK/runs"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

CONFIG=(--preset c1-cifar10 data.name=shapes data.train_size=50000 data.test_size=10000)
SEEDS=(0 1 2)
THREADS=2
if [[ "${2:-}" == "--smoke" ]]; then
  CONFIG=(--preset c1-cifar10 --epochs 3 data.name=shapes data.train_size=2048 data.test_size=200
          policy.max_global_batch=512 policy.duration=1)
  SEEDS=(0)
  THREADS=1
fi

pids=()
for policy in absa fixed; do  # absa first: its growth causes are the question; fixed gives the pairs
  for seed in "${SEEDS[@]}"; do
    timeout --kill-after=5 "$DEADLINE" "$PY" benchmarks/iterations.py "${CONFIG[@]}" --policies "$policy" \
      --seeds "$seed" --threads "$THREADS" --runs-dir "$WORK/runs" --out "$WORK/results/$policy-$seed.json" \
      >"$WORK/logs/$policy-$seed.log" 2>&1 &
    pids+=($!)
  done
done
failed=0 cut=0
for pid in "${pids[@]}"; do
  code=0
  wait "$pid" || code=$?
  if ((code == 124 || code == 137)); then cut=$((cut + 1)); elif ((code)); then failed=$((failed + 1)); fi
done
# The files first, so that a report that breaks on a cut run's records still leaves them.
tar -C "$WORK" -cf "$OUT_DIR/paper_schedule.tar" logs results \
  $(cd "$WORK" && find runs -name metrics.jsonl -o -name config.yaml -o -name console.log)

REPORT=$OUT_DIR/paper_schedule.md
set +e  # the report is best effort: it must not hide the runs' outcome below
{
  echo "## The paper's C1 schedule on CIFAR-sized shapes (issue 13), ${#pids[@]} runs side by side"
  echo
  echo "iterations.py ${CONFIG[*]} --threads $THREADS; deadline ${DEADLINE} s; $(date -u +%FT%TZ)"
  shopt -s nullglob
  results=("$WORK"/results/*.json)
  if ((${#results[@]})); then
    "$PY" benchmarks/iterations.py --tables-from "${results[@]}"
  else
    echo "no run finished before the deadline"
  fi
  echo
  echo "Every run so far, from its epoch records (growths: curvature early / on the fallback's epoch / fallback):"
  echo
  "$PY" - "$WORK/runs" <<'EOF'
import json, sys
from pathlib import Path

import yaml

sys.path.insert(0, "benchmarks")
from iterations import growth_causes, schedule

for run in sorted(Path(sys.argv[1]).iterdir()):
    config = yaml.safe_load((run / "config.yaml").read_text())
    name = f"{config['policy']['name']} seed {config['seed']} ({run.name})"
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a run the deadline killed mid-write
            pass
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs:
        print(f"- {name}: no epoch finished")
        continue
    last = epochs[-1]
    causes = " / ".join(map(str, growth_causes(epochs))) if config["policy"]["name"] != "fixed" else "—"
    print(f"- {name}: {len(epochs)} epochs, {last['updates']} updates, test acc {100 * last['test_acc']:.2f}%, "
          f"batches {schedule([r['global_batch_size'] for r in epochs])}, growths {causes}, "
          f"λ_max {[round(r['eigenvalue'], 2) for r in epochs if r.get('eigenvalue') is not None]}")
EOF
} 2>&1 | tee "$REPORT"
echo "paper schedule: ${#pids[@]} runs, $cut cut by the deadline, $failed failed (tables $REPORT, files" \
  "$OUT_DIR/paper_schedule.tar)"
exit $((failed ? 1 : 0))  # a run the deadline cut is an incomplete measurement, reported above, not a failure
