#!/usr/bin/env bash
# Download, on a CPU machine with network, the wheels that benchmarks/gpu_check.sh installs on the
# H100/H200 machine (CPython 3.12, manylinux x86_64, no network there).
#
#   bash benchmarks/fetch_gpu_wheels.sh [DEST]      # DEST defaults to benchmarks/wheels (git-ignored)
#
# The names come from benchmarks/gpu_wheels.txt (`name==version`, one a line). Each is fetched on its
# own with `pip download --no-deps --only-binary=:all:` for Python 3.12 and the manylinux tags of that
# machine (pure-Python wheels, py3-none-any, match too), so one missing wheel does not stop the rest.
# Wheels in DEST that the list no longer names are removed (two versions of one project would stop the
# install there). Prints each wheel's size and the total, and fails when a name could not be fetched
# or the folder exceeds the device tool's carry budget (WHEELS_MAX_MIB, default 48 MiB: the whole
# working tree that travels, carried paths included, must stay under 64 MiB).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="$here/gpu_wheels.txt"
dest="${1:-$here/wheels}"
max_mib="${WHEELS_MAX_MIB:-48}"
python="${PYTHON:-python3}"

mkdir -p "$dest" || exit 1
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
    platforms+=(--platform "$tag")
done

# "pydantic-core==2.50.5" -> "pydantic_core" (wheel file names use the normalised project name)
norm() { echo "$1" | tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/_/g'; }

mapfile -t specs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
failed=()
keep=()
for spec in "${specs[@]}"; do
    name="${spec%%==*}"
    version="${spec#*==}"
    keep+=("$(norm "$name")-$version")
    if compgen -G "$dest/$(norm "$name")-$version-*.whl" >/dev/null ||
        compgen -G "$dest/${name}-$version-*.whl" >/dev/null; then
        echo "have   $spec"
        continue
    fi
    echo "fetch  $spec"
    # pip's warnings about this machine's absent local indexes are noise
    if "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dest" "$spec" 2> >(grep -v "is ignored: it is neither" >&2); then
        continue
    fi
    # no wheel on the index (FrEIA ships an sdist only): build one, and keep it only if it is pure Python
    echo "build  $spec (no wheel on the index)"
    tmp="$(mktemp -d)"
    if "$python" -m pip wheel -q --no-deps -w "$tmp" "$spec" 2> >(grep -v "is ignored: it is neither" >&2) &&
        compgen -G "$tmp/*-py3-none-any.whl" >/dev/null; then
        mv "$tmp"/*-py3-none-any.whl "$dest"/
    else
        failed+=("$spec")
    fi
    rm -rf "$tmp"
done

# drop wheels that the list does not name (older pins)
for whl in "$dest"/*.whl; do
    [ -e "$whl" ] || continue
    base="$(basename "$whl")"
    stem="$(norm "${base%%-*}")-$(echo "$base" | cut -d- -f2)"
    found=0
    for k in "${keep[@]}"; do [ "$k" = "$stem" ] && found=1 && break; done
    if [ "$found" = 0 ]; then
        echo "remove $base (not in gpu_wheels.txt)"
        rm -f "$whl"
    fi
done

echo
echo "wheels in $dest:"
total=0
for whl in "$dest"/*.whl; do
    [ -e "$whl" ] || continue
    bytes=$(stat -c %s "$whl")
    total=$((total + bytes))
    printf '%8.2f MiB  %s\n' "$(echo "$bytes / 1048576" | bc -l)" "$(basename "$whl")"
done
printf '%8.2f MiB  total (%d wheels, limit %s MiB)\n' "$(echo "$total / 1048576" | bc -l)" \
    "$(find "$dest" -maxdepth 1 -name '*.whl' | wc -l)" "$max_mib"

status=0
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED to fetch: ${failed[*]}" >&2
    status=1
fi
if [ "$total" -gt $((max_mib * 1048576)) ]; then
    echo "FAILED: the wheels exceed ${max_mib} MiB; the device tool carries at most 64 MiB in all" >&2
    status=1
fi
exit "$status"
