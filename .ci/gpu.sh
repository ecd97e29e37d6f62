#!/usr/bin/env bash
# One call on a lent GPU machine (the project's `device` tool; not part of CI).
# Usage: bash .ci/gpu.sh STEP...   with steps: env tests bench-kan notebooks nb:NAME bench:SUITE pytest:ARGS
# (pytest:ARGS takes one word; use pytest:tests/test_x.py::name)
# The machine has torch/triton but no Jupyter stack: wheels for it travel in .whl/ (bash .ci/gpu-wheels).
set -uo pipefail
# No MPLBACKEND here: executed notebooks need the inline backend to store their figures.
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
status=0
# The result files a step wrote (not the committed ones of other devices), as $OUT/<device>/<suite>.json.
copy_new_results() {
    find bench/results -name "$1.json" -newer "$marker" | while read -r f; do
        mkdir -p "$OUT/$(basename "$(dirname "$f")")" && cp "$f" "$OUT/$(basename "$(dirname "$f")")/"
    done
}
for step in "$@"; do
    marker=$(mktemp); sleep 1; unset rc
    echo "=== $step"
    case $step in
        env) nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
             python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" ;;
        tests) python3 -m pytest tests -q -x -p no:cacheprovider --ignore=tests/test_book_harness.py 2>&1 | tee "$OUT/tests.log" | tail -25 ;;
        bench-kan) python3 -m labkit.bench kan 2>&1 | tee "$OUT/bench_kan.log" | tail -60
                   python3 -m labkit.bench kan-sweeps 2>&1 | tee -a "$OUT/bench_kan.log" | tail -5
                   copy_new_results kan; copy_new_results kan-sweeps ;;
        notebooks) python3 -m labkit.book execute --profile full 2>&1 | tee "$OUT/notebooks.log" | tail -20
                   cp notebooks/*.ipynb "$OUT/" ;;
        nb:*) name=${step#nb:}   # one notebook, e.g. nb:03_csos
              # NB_LIMIT (s): stop it in time to keep the cells that ran (NAME.failed.ipynb comes back)
              timeout "${NB_LIMIT:-3600}" python3 -m labkit.book execute --profile full --timeout "${CELL_TIMEOUT:-600}" \
                  "notebooks/$name.py" 2>&1 | tee -a "$OUT/notebooks.log" | tail -8; rc=${PIPESTATUS[0]}
              cp "notebooks/$name.ipynb" "$(dirname "notebooks/$name")"/*.failed.ipynb "$OUT/" 2>/dev/null ;;
        bench:*) suite=${step#bench:}   # one suite, e.g. bench:flow
                 # BENCH_LIMIT (s): SIGTERM in time; the suites that can keep the rows measured so far
                 timeout "${BENCH_LIMIT:-3600}" python3 -m labkit.bench "$suite" 2>&1 | tee -a "$OUT/bench_$suite.log" | tail -30
                 rc=${PIPESTATUS[0]}
                 copy_new_results "$suite" ;;
        pytest:*) python3 -m pytest -q -p no:cacheprovider ${step#pytest:} 2>&1 | tee -a "$OUT/pytest.log" | tail -15 ;;
        *) python3 -m "$step" 2>&1 | tee -a "$OUT/steps.log" | tail -40 ;;
    esac
    [ "${rc:-${PIPESTATUS[0]}}" = 0 ] || status=1  # the step's main pipeline, not the copying after it
done
exit $status
