#!/usr/bin/env bash
# Install everything, then start the server on port 50051 (metrics on 9400).
# Uses the real Paraformer-large pipeline when its models are in the cache or can be downloaded
# (or when ASR_ASR_MODEL etc. point at local directories). When no real model can be had -
# an offline machine - it says so loudly and starts the DEMO (random weights, nonsense text).
# `paraformer-asr serve` itself never falls back: demo is always an explicit choice there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if .venv/bin/paraformer-asr fetch-models "$@"; then
  exec .venv/bin/paraformer-asr serve "$@"
fi
cat >&2 <<'MSG'

  !!! No real model could be loaded (see the reason above).
  !!! Starting the DEMO instead: tiny RANDOM-WEIGHT models, NONSENSE transcripts.
  !!! For real recognition: ASR_ASR_MODEL=/path/to/paraformer-large make run (and ASR_VAD_MODEL, ASR_PUNC_MODEL)

MSG
exec .venv/bin/paraformer-asr serve --demo "$@"
