#!/usr/bin/env bash
# The band study's screening on one CUDA GPU, within a time budget, its storage and export written to $OUT.
#
# Prepared for the lent GPU machine (one H200, 16 cores, torch with CUDA, no Optuna, no package index): run from
# the repository root with the MNIST files in .mnist/ and Optuna's wheels in .whl/ (both ignored by git, both
# carried), e.g. through the device tool:
#   mkdir -p .mnist && cp "$TINYMNIST_DATA"/*-ubyte* .mnist/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl optuna alembic sqlalchemy colorlog mako greenlet
#   run: bash bench/gpu_study.sh   (carry .mnist and .whl; OUT is set there)
# The same script runs on a CPU with a tiny budget (a test in tests/test_search.py does):
#   OUT=/tmp/o DATA=DIR TRIALS=1 WORKERS=1 BUDGET_S=120 EXTRA="--subset 500 --validation 500" bash bench/gpu_study.sh
set -uo pipefail
OUT=${OUT:?set OUT to the folder that receives the storage and the export}
DATA=${DATA:-.mnist}
STUDY=${STUDY:-band-4k-6k-gpu}
TRIALS=${TRIALS:-200}          # more than fit: the budget ends the study, the storage keeps what finished
WORKERS=${WORKERS:-8}          # worker processes sharing the GPU; each gets cores/WORKERS CPU threads
BUDGET_S=${BUDGET_S:-480}      # seconds of searching, leaving the rest of a nine-minute call for the export
EXTRA=${EXTRA:-}
if [ -d .whl ] && ! python3 -c "import optuna" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu only')"
# shellcheck disable=SC2086  # EXTRA is a list of flags
timeout --signal=INT "$BUDGET_S" python3 -m tinymnist search --study "$STUDY" --space examples/spaces.py:band_4k_6k \
  --max-params 6000 --trials "$TRIALS" --workers "$WORKERS" --storage "sqlite:///$OUT/$STUDY.db" \
  --precision fp32 --data-dir "$DATA" $EXTRA 2>&1 | tee "$OUT/search.log"
python3 -m tinymnist search-export --storage "sqlite:///$OUT/$STUDY.db" --study "$STUDY" --out "$OUT/$STUDY.json"
