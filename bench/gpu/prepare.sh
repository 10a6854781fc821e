#!/usr/bin/env bash
# Run here, before a GPU machine is lent: downloads into .whl/ (ignored by git) the cp312 manylinux x86_64 wheels
# the GPU machine's image lacks (bench/gpu/packages.py names them and says why), checks that each requirement is
# met there, and that the working tree and the wheels together stay within the 64 MiB a device call may send.
#
#   bash bench/gpu/prepare.sh            # PYTHON=... picks the interpreter whose pip downloads (default python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEST=.whl

if ! git check-ignore -q "$DEST"; then
    echo "error: $DEST/ is not ignored by git: add /.whl/ to .gitignore (it must not be committed)" >&2
    exit 1
fi
mkdir -p "$DEST/fallback"
# One version of each package there: clear what an earlier list left behind
find "$DEST" -type f -name '*.whl' -delete

PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
download() {  # folder, then NAME==VERSION ...
    local into=$1; shift
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$into" "$@"
}
mapfile -t WANTED < <("$PY" -m bench.gpu.packages requirements)
mapfile -t FALLBACK < <("$PY" -m bench.gpu.packages fallbacks)
echo "downloading ${#WANTED[@]} wheels (+ ${#FALLBACK[@]} fallback) into $DEST/"
download "$DEST" "${WANTED[@]}"
download "$DEST/fallback" "${FALLBACK[@]}"

"$PY" -m bench.gpu.packages check "$DEST"
ls -l "$DEST"/*.whl "$DEST"/fallback/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5 / 1048576, $NF}'
"$PY" -m bench.gpu.packages size "$DEST"
