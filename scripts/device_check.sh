#!/usr/bin/env bash
# One prepared check of the project on one GPU, in about 6 minutes on an H100:
#   1. the tests marked `gpu` (pytest -m gpu);
#   2. the headline run, `python -m lstm_jax.train --config configs/dnd.py`, to
#      the end (1500 steps), its wall time and final summary (time breakdown,
#      val perplexity);
#   3. sampling from that run with `python -m lstm_jax.sample` (wall time);
#   4. our LSTM (cuDNN, fused) in a Flax model against Flax's own
#      nn.RNN(OptimizedLSTMCell) in the same model (`python -m benchmarks.flax_layer`);
#   5. the benchmark, every GPU config and the sampling rows, against the
#      PyTorch peer (cuDNN fp32 and bf16 autocast) on the same GPU, capped by
#      what is left of the time budget.
# Everything goes into one results folder ($OUT if set, else
# ./device_check_results; at most 8 files), and the last lines printed are a
# short table (scripts/device_check_report.py).
#
#   scripts/device_check.sh              # on the GPU machine
#   scripts/device_check.sh --cpu-smoke  # the same steps, tiny, on a CPU
#                                        # (or DEVICE_CHECK_SMOKE=1)
#
# Wheels of packages the GPU image lacks (scripts/fetch_device_wheels.sh puts
# them in .whl/) are installed first when present. PYTHON picks the interpreter
# (default python3: on the GPU image the one holding both jax and torch).
# DEVICE_CHECK_TOTAL_S (default 330) is the whole check's time budget.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=${DEVICE_CHECK_SMOKE:-0}
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    *) echo "device_check.sh: unknown argument '$arg' (valid: --cpu-smoke)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
RESULTS=${OUT:-./device_check_results}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "device_check.sh: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

if [[ $SMOKE == 1 ]]; then
  export JAX_PLATFORMS=cpu
  TOTAL_S=${DEVICE_CHECK_TOTAL_S:-240}
  TEST_TIMEOUT=120
  TRAIN_CONFIG=configs/dnd.py:smoke
  TRAIN_TIMEOUT=120
  SAMPLE_ARGS=(--num_samples 4 --length 20)
  FLAX_ARGS=(--shapes smoke --impls fused --steps 2 --turns 1)
  BENCH_ARGS=(--configs sample,smoke --impls fused,fused_bf16 --steps 2 --rounds 1 --warmup 1
    --sample_tokens 20 --matmul_n 256)
else
  TOTAL_S=${DEVICE_CHECK_TOTAL_S:-330}
  TEST_TIMEOUT=90
  TRAIN_CONFIG=configs/dnd.py
  TRAIN_TIMEOUT=120
  SAMPLE_ARGS=(--num_samples 64 --length 200)
  FLAX_ARGS=(--shapes course_project,dnd_word,char_rnn --impls cudnn,fused --steps 10 --turns 3)
  # sampling first, then the configs of the GPU goals (docs/performance.md), headline first
  BENCH_ARGS=(--configs sample,course_project,dnd_word,gpu_2x1024,char_rnn,gpu_2x650
    --impls fused,cudnn,fused_bf16)
fi

PHASES="$RESULTS/phases.txt" # one line per step: name, exit status, wall seconds
: >"$PHASES"
elapsed() { echo $(($(date +%s) - START)); }
phase() { # phase NAME TIMEOUT_S LOGFILE CMD... : run, log, record status and wall time
  local name=$1 limit=$2 log=$3
  shift 3
  echo "== $name (at most ${limit}s) =="
  local t0=$EPOCHREALTIME rc
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  awk -v n="$name" -v rc="$rc" -v t0="$t0" -v t1="$EPOCHREALTIME" \
    'BEGIN { printf "%s\t%s\t%.1f\n", n, rc, t1 - t0 }' >>"$PHASES"
  tail -n 3 "$log"
}

{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo n/a)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
    sed 's/^/# gpu: /'
  "$PY" -c 'import jax, sys; print("# python", sys.version.split()[0], "jax", jax.__version__,
    jax.default_backend(), jax.devices()[0].device_kind)' 2>&1 | tail -n 1
  "$PY" -c 'import torch; print("# torch", torch.__version__, "cuda", torch.cuda.is_available(),
    "cudnn", torch.backends.cudnn.version())' 2>/dev/null || echo "# torch: not importable"
} >>"$PHASES"
cat "$PHASES"

# 1. The gpu tests (exit status 5 = none collected, e.g. before they exist).
phase gpu_tests "$TEST_TIMEOUT" "$RESULTS/pytest.txt" "$PY" -m pytest -q -m gpu tests

# 2. The headline run to the end; its summary is the JSON object that ends stdout.
phase train "$TRAIN_TIMEOUT" "$RESULTS/train.txt" \
  "$PY" -m lstm_jax.train --config "$TRAIN_CONFIG" --workdir "$WORK/dnd"

# 3. Sampling from that run, end to end (imports, restore, compile, generate).
phase sample 60 "$RESULTS/sample.txt" \
  "$PY" -m lstm_jax.sample --workdir "$WORK/dnd" "${SAMPLE_ARGS[@]}"

# 4. Our layer against Flax's own, each in the same Flax model (the summary reads
# the table rows).
phase flax_layer 150 "$RESULTS/flax_layer.md" \
  "$PY" -m benchmarks.flax_layer "${FLAX_ARGS[@]}"

# 5. The benchmark with what is left of the budget (it never starts a row it
# cannot finish; the margin covers the one compile or round that may overrun).
BUDGET=$((TOTAL_S - $(elapsed) - 30))
((BUDGET < 20)) && BUDGET=20
phase bench $((BUDGET + 90)) "$RESULTS/bench.md" \
  "$PY" -m benchmarks.throughput "${BENCH_ARGS[@]}" --peers torch --budget_s "$BUDGET" \
  --json "$RESULTS/bench.jsonl"

echo "== summary ($(elapsed) s in all; results in $RESULTS) =="
"$PY" scripts/device_check_report.py "$RESULTS" | tee "$RESULTS/summary.md"
