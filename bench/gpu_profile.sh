#!/usr/bin/env bash
# Where a GPU server's time goes: py-spy over the batching-ON server and all its worker processes
# (--subprocesses) for 9 s of a 64-client point, CPU per process from /proc over 8 s, and
# nvidia-smi dmon. The sweep's second server differs by COMPARE (default max-batch-size=48); the
# profiler slows the ON server, so read the comparison from a run without it (bench/gpu.sh).
#
#   bash bench/gpu_profile.sh [OUT_DIR]
#
# Needs what bench/gpu.sh needs, plus py-spy (PY_SPY; e.g. a py-spy wheel installed with the others).
set -u
cd "$(dirname "$0")/.."
out=${1:-/tmp/gpu-profile}
models=${MODEL_DIR:-/tmp/paraformer-bench/large}
py=${PYTHON:-python3}
spy=${PY_SPY:-py-spy}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
if [ ! -f "$models/asr/config.yaml" ]; then
    $py -m app.cli build-demo-models "$models" --large >/dev/null || exit 1
fi
$py -c "import sys; from pathlib import Path; from bench.common import repair_token_list as fix; [fix(Path(sys.argv[1]) / d / 'tokens.json') for d in ('asr', 'online')]" "$models"
(nvidia-smi dmon -s u -d 1 > "$out/dmon.txt" 2>&1 &)
timeout 280 $py -m bench.load --models "$models" --preset large --device "${DEVICE:-cuda}" --phases sweep --sets short \
    --concurrency 64 --point-seconds 14 --requests-per-client 40 --min-requests 16 --max-requests 4000 --timeout-s 120 \
    --server-flag model-processes=auto --compare "${COMPARE:-max-batch-size=48}" --label gpu-profile --plot none > "$out/bench.txt" 2>&1 &
bench=$!
until grep -q "^sweep" "$out/bench.txt" 2>/dev/null; do sleep 0.5; kill -0 $bench 2>/dev/null || break; done
sleep 3  # into the ON server's point (it goes first)
pid=$(pgrep -f "serve .*--max-batch-size 16 " | head -1)
[ -n "$pid" ] || { echo "ON server not found"; cat "$out/bench.txt"; exit 1; }
$py - "$pid" > "$out/cpu-per-process.txt" <<'PY' &
import sys, time
from pathlib import Path
from bench.common import process_tree

def cpu():
    out = {}
    for pid in process_tree(int(sys.argv[1])):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:150].decode()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12]), cmd)
    return out

before = cpu(); time.sleep(8); after = cpu()
for pid, (ticks, cmd) in after.items():
    print(pid, round((ticks - before.get(pid, (ticks, ""))[0]) / 100 / 8, 2), "cores", cmd)
PY
"$spy" record --pid "$pid" --subprocesses --duration 9 --rate 100 --format raw --output "$out/py-spy.txt" --nonblocking > "$out/py-spy.log" 2>&1
wait $bench
tail -8 "$out/bench.txt"
cat "$out/cpu-per-process.txt"
