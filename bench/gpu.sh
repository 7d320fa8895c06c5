#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md on a CUDA machine, capped at about ten minutes (timeouts
# of 330 s and 200 s, plus the model build; the fifth session's run without the long set took about 6 min):
# batching on vs off with the Paraformer-large-sized random model (unary), the same model at 10x
# its sustainable load, then how many real-time streams it sustains. Results go to
# bench/results/gpu-*.json and OUT_DIR.
#
#   bash bench/gpu.sh [OUT_DIR]
#
# Knobs (environment): CONCURRENCY (default 1,32,64), SETS (short,long), OVERLOAD_WAIT (the
# overload server's wait limit: seconds or p99, the default), MODEL_PROCESSES (the servers'
# --model-processes: auto, the default, is on with CUDA), COMPARE (a serve flag NAME=VALUE: the sweep's
# second server is then the ON server with that flag instead of batching off, e.g.
# COMPARE=model-processes=off measures the worker processes against threads in one run), STREAM_LEVELS
# (8,24,48; none skips streaming), MODEL_DIR, PYTHON, DEVICE.
#
# Needs python3 with a CUDA torch and the project's dependencies importable (an installed
# checkout, or PYTHONPATH). Models are built into MODEL_DIR (default /tmp/paraformer-bench/large).
# On a machine with CUDA torch but without network, bring the other dependencies as wheels
# (pip download --no-deps --python-version ... -d .whl funasr==1.4.16 grpcio==1.85.3 ...), then:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
models=${MODEL_DIR:-/tmp/paraformer-bench/large}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ ! -f "$models/online/config.yaml" ]; then
    $py -m app.cli build-demo-models "$models" --large >/dev/null || exit 1
fi
$py -c "import sys; from pathlib import Path; from bench.common import repair_token_list as fix; [fix(Path(sys.argv[1]) / d / 'tokens.json') for d in ('asr', 'online')]" "$models"

# Unary: 2 s utterances at 1, 32 and 64 clients, 5-minute recordings at 8 clients; ON and OFF servers
# alternate. Then the overload phases (0.5x, 10x, 0.5x the best ON rate) against a third server
# whose wait limit is the sweep's p99 at 32 clients.
label="gpu-large-mp-${MODEL_PROCESSES:-auto}${COMPARE:+-vs-${COMPARE//=/-}}"
timeout 330 $py -m bench.load --models "$models" --preset large --device "$device" --phases sweep,overload \
    --sets "${SETS:-short,long}" --concurrency "${CONCURRENCY:-1,32,64}" --long-concurrency 8 --point-seconds 12 --long-point-seconds 20 \
    --min-requests 16 --max-requests 2000 --long-max-requests 24 --timeout-s 120 \
    --overload-queue-wait "${OVERLOAD_WAIT:-p99}" --overload-phases 5,10,10 \
    --server-flag "model-processes=${MODEL_PROCESSES:-auto}" ${COMPARE:+--compare "$COMPARE"} --label "$label" --plot none
cp "bench/results/$label.json" "$out/" 2>/dev/null

# Streaming: real-time streams with the large-sized offline + online models on the GPU.
[ "${STREAM_LEVELS:-}" = none ] && exit 0
timeout 200 $py -m bench.stream_load --models "$models" --preset large --device "$device" --phases sweep \
    --levels "${STREAM_LEVELS:-8,24,48}" --seconds 20 --stagger-s 2 --stop-after-failures 1 --label gpu-large
cp bench/results/stream_gpu-large.json "$out/" 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader
