#!/usr/bin/env bash
# The GPU runbook, run on a lent GPU machine in one device call (docs/gpu-runbook.md): installs the wheels that
# bench/gpu/prepare.sh put in .whl/, then runs every step of bench/gpu/runbook.py, each under its own time limit,
# writing JSON into $OUT. About 7 minutes; a failing step is recorded and the next one runs.
#
#   bash bench/gpu/run.sh                       # there ($OUT is set by the device tool; carry .whl)
#   bash bench/gpu/run.sh --only matrix,chat    # there again: some steps only
#   bash bench/gpu/run.sh --dry-run             # here: the same steps on the CPU, tiny shapes, no install
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DRY=0
for arg in "$@"; do
    [ "$arg" = --dry-run ] && DRY=1
done
if [ "$DRY" = 1 ]; then
    OUT=${OUT:-$(mktemp -d -t tuiwiz-gpu-runbook-XXXXXX)}
elif [ -z "${OUT:-}" ]; then
    echo "error: OUT is not set: the device tool sets it there; here, run with --dry-run" >&2
    exit 2
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
install=()
if [ "$DRY" = 0 ]; then
    started=$(date +%s)
    if ls .whl/*.whl >/dev/null 2>&1; then
        # the fallbacks (peft) only where the image's copy is older than tuiwiz needs
        mapfile -t fallback < <("$PY" -m bench.gpu.packages fallbacks-needed .whl)
        echo "installing $(ls .whl/*.whl | wc -l) wheels (+ ${#fallback[@]} fallback) into /tmp/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl "${fallback[@]}" >>"$OUT/log.txt" 2>&1
        rc=$?
    else
        echo "error: no wheels in .whl/: run bash bench/gpu/prepare.sh here first, and name .whl in carry" \
            | tee -a "$OUT/log.txt" >&2
        rc=1
    fi
    install=(--install-rc "$rc" --install-seconds "$(( $(date +%s) - started ))")
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# tuiwiz itself from this checkout, without installing it (the runner's subprocesses inherit the path)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -m bench.gpu.runbook --out "$OUT" "${install[@]}" "$@"
