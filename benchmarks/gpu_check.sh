#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step_* functions run through `--step NAME` ("step_$STEP")
# One-shot GPU check: everything a GPU must show, in one run of at most 8 minutes.
#
# On the H100/H200 machine, from the repository root (no network there):
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--export DIR] [--budget-s 470] [--only STEPS] [--skip STEPS]
#
# On a CPU machine, before:
#
#   bash benchmarks/fetch_gpu_wheels.sh          # fill benchmarks/wheels/ (git-ignored) from gpu_wheels.txt
#   bash benchmarks/gpu_check.sh --stage-data    # copy a small real dataset + bank into benchmarks/gpu_data/
#   bash benchmarks/gpu_check.sh --dry-run       # check that every file, test, flag and wheel it uses exists
#
# Steps (each with its own `timeout`, each logged to OUT_DIR/<step>.log; a failure never stops the rest):
#   env         nvidia-smi, torch / CUDA / CuPy versions, device name
#   install     the wheels of benchmarks/wheels/ (pip install --no-index --no-deps), then the project
#               (pip install --no-deps -e ., never replacing the machine's torch), pip check, imports
#   tests       every GPU test and the CPU agreement tests (junit XML: OUT_DIR/tests_gpu.xml, tests_cpu.xml)
#   throughput  benchmarks/speed/throughput.py at 256 and 512, batch 1/64/256: CuPy, torch-on-GPU,
#               the CPU path and cv2.seamlessClone on one core, with the device's two floors; the
#               summary gives the default configuration's images/s (3 anomalies per image) at 256x256
#               batch 256 beside the one-anomaly figure
#   step_share  benchmarks/speed/step_share.py: augmentation share of a DRAEM training step (batch 8/32)
#               and real anomalib Draem training steps with CAIAnomalyGenerator on CUDA
#   detector    a short run of the detector harness (paper preset, epochs cut) on the GPU
# Then OUT_DIR/summary.json (machine-readable) and OUT_DIR/summary.txt, printed last.
#
# --export DIR copies summary.txt, summary.json, throughput.png and gpu_check.tar.gz (every log and
# table of OUT_DIR) into DIR after every step, so that a run cut short still returns what it measured
# (the device tool returns at most 8 files from $OUT). Environment: PYTHON (default python3).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/benchmarks/gpu_check.sh"
cd "$REPO" || exit 2
PY="${PYTHON:-python3}"
WHEELS="$REPO/benchmarks/wheels"
DATA_DIR="$REPO/benchmarks/gpu_data"
STEPS=(env install tests throughput step_share detector)

# every test the tests step runs (files or node ids); --dry-run checks that each collects. The CUDA
# tests run in one process (they measure free GPU memory and host syncs), then the CPU ones (about 10 s).
GPU_TESTS=(
    tests/poisson/test_gpu_poisson.py
    tests/frontends/test_gpu_pipeline.py
    tests/frontends/test_frontend_augment.py::test_cuda_batch
    tests/frontends/test_frontend_anomalib.py
    tests/frontends/test_frontend_albumentations.py
    tests/frontends/test_frontend_kornia.py
)
CPU_TESTS=(
    tests/poisson/test_poisson.py
    tests/poisson/test_gpu_emulated.py
    tests/poisson/test_kernels_compile.py
)
# modules the installed wheels must make importable there
IMPORTS=(cai_aug cupy albumentations kornia anomalib anomalib.models torchvision)

# ------------------------------------------------------------------------------------------- arguments

usage() { awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$SELF"; }

OUT=""
EXPORT=""
BUDGET_S=470
ONLY=""
SKIP=""
MODE=run
STEP=""
while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) MODE=dry ;;
    --step) MODE=step && STEP="$2" && shift ;;
    --stage-data) MODE=stage ;;
    --export) EXPORT="$2" && shift ;;
    --budget-s) BUDGET_S="$2" && shift ;;
    --only) ONLY=",$2," && shift ;;
    --skip) SKIP=",$2," && shift ;;
    -h | --help) usage && exit 0 ;;
    -*) echo "unknown option $1" >&2 && usage >&2 && exit 2 ;;
    *) OUT="$1" ;;
    esac
    shift
done



# ---------------------------------------------------------------------------------------------- dry run

dry_run() {
    local out="${1:-}"
    local log=/dev/null
    if [ -n "$out" ]; then
        mkdir -p "$out" && log="$out/dry_run.log"
    fi
    GPU_TESTS_LIST="${GPU_TESTS[*]} ${CPU_TESTS[*]}" "$PY" - "$REPO" <<'PYEOF' 2>&1 | tee "$log"
import os
import re
import subprocess
import sys
from pathlib import Path

repo = Path(sys.argv[1])
missing: list[str] = []
notes: list[str] = []


def need(path: str) -> None:
    if not (repo / path).exists():
        missing.append(f"file {path}")


# files and scripts the run uses; for each script the flags gpu_check.sh passes it (checked in its source)
flags = {
    "benchmarks/speed/throughput.py": [
        "--paths", "--sizes", "--batches", "--cpu-batches", "--threads", "--repeats", "--budget-s", "--json",
        "--plot",
    ],
    "benchmarks/speed/step_share.py": [
        "--device", "--batches", "--size", "--anomalib-steps", "--budget-s", "--json",
    ],
    "benchmarks/detector/cli.py": [
        "--data", "--bank", "--synth", "--preset", "--epochs", "--per-image", "--device", "--out", "--quiet",
        "--no-authenticity", "--threads",
    ],
}
for script, names in flags.items():
    need(script)
    if (repo / script).exists():
        src = (repo / script).read_text()
        for flag in names:
            if f'"{flag}"' not in src:
                missing.append(f"flag {flag} of {script}")
        compiled = subprocess.run([sys.executable, "-m", "py_compile", str(repo / script)], capture_output=True)
        if compiled.returncode:
            missing.append(f"{script} does not compile: {compiled.stderr.decode().strip()}")
for path in (
    "pyproject.toml", "benchmarks/gpu_wheels.txt", "benchmarks/fetch_gpu_wheels.sh", "benchmarks/speed/poisson_speed.py",
    "benchmarks/detector/__main__.py", "benchmarks/detector/unet.py", "benchmarks/detector/toydata.py",
    "kernels/poisson_cg.cu", "kernels/poisson_mg.cu",
):  # fmt: skip
    need(path)

# wheels: names well formed, one pin each; present when the folder has been filled
spec_re = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!_-]*)$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


specs: dict[str, str] = {}
wheel_list = repo / "benchmarks/gpu_wheels.txt"
for n, line in enumerate(wheel_list.read_text().splitlines() if wheel_list.exists() else [], 1):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = spec_re.match(line)
    if not m:
        missing.append(f"gpu_wheels.txt line {n}: {line!r} is not name==version")
        continue
    if norm(m[1]) in specs:
        missing.append(f"gpu_wheels.txt line {n}: {m[1]} is pinned twice")
    specs[norm(m[1])] = m[2]
if wheel_list.exists() and not specs:
    missing.append("gpu_wheels.txt names no wheel")
# never a package the GPU machine has (a --no-deps install would replace its version)
for name in ("torch", "torchvision", "numpy", "scipy", "cupy_cuda13x", "opencv_python_headless", "lightning",
             "typing_extensions", "pytest"):  # fmt: skip
    if name in specs:
        missing.append(f"gpu_wheels.txt pins {name}, which the GPU machine already has")
wheels = repo / "benchmarks/wheels"
if not wheels.is_dir():
    notes.append(f"wheels: not fetched yet ({len(specs)} names valid; run bash benchmarks/fetch_gpu_wheels.sh)")
else:
    have: dict[str, list[str]] = {}
    for whl in sorted(wheels.glob("*.whl")):
        parts = whl.name[:-4].split("-")
        if len(parts) < 5:
            missing.append(f"wheel {whl.name}: not a wheel file name")
            continue
        name, version, py, abi, plat = norm(parts[0]), parts[1], parts[-3], parts[-2], parts[-1]
        ok_py = py.startswith("py3") or "cp312" in py or (abi == "abi3" and py.startswith("cp3"))
        ok_plat = plat == "any" or ("x86_64" in plat and "linux" in plat)
        if not (ok_py and ok_plat):
            missing.append(f"wheel {whl.name}: does not install on CPython 3.12 / manylinux x86_64")
        have.setdefault(name, []).append(version)
    for name, version in specs.items():
        if version not in have.get(name, []):
            missing.append(f"wheel {name}=={version}: not in benchmarks/wheels (run benchmarks/fetch_gpu_wheels.sh)")
    for name, versions in have.items():
        if specs.get(name) not in versions or len(versions) > 1:
            missing.append(f"wheel {name} {versions}: not the one pin of gpu_wheels.txt (stale; re-run the fetch)")
    size = sum(w.stat().st_size for w in wheels.glob("*.whl")) / 2**20
    notes.append(f"wheels: {len(have)} present, {size:.1f} MiB (the device tool carries 64 MiB in all)")

data = repo / "benchmarks/gpu_data"
if data.is_dir():
    for sub in ("target/train/good", "bank/MANIFEST.csv"):
        if not (data / sub).exists():
            missing.append(f"staged data: benchmarks/gpu_data/{sub} is absent (re-run --stage-data)")
    notes.append("detector data: benchmarks/gpu_data (staged real data)")
else:
    notes.append("detector data: not staged, the GPU run uses the harness's toy data (--stage-data to stage)")

# every test node collects
targets = os.environ["GPU_TESTS_LIST"].split()
for t in targets:
    need(t.split("::")[0])
existing = [t for t in targets if (repo / t.split("::")[0]).exists()]
env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
proc = subprocess.run(
    [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *existing],
    cwd=repo, capture_output=True, text=True, env=env,
) if existing else subprocess.CompletedProcess([], 0, "", "")  # fmt: skip
collected = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
if proc.returncode not in (0, 5):
    missing.append(f"pytest --collect-only failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-1000:]}")
for t in existing:
    if "::" in t and not any(c == t or c.startswith(t + "[") for c in collected):
        missing.append(f"test {t}: not collected")
    elif not any(c.startswith(t + "::") or c.startswith(t + "[") or c == t for c in collected):
        notes.append(f"tests: {t} collects no test here (a module-level skip; it runs where its imports exist)")
notes.append(f"tests: {len(collected)} collected from {len(existing)} targets")

# tests elsewhere that need CUDA but are not in the list, and CUDA tests without the gpu marker
cuda_use = re.compile(r"requires_cuda|torch\.cuda\.is_available\(\)|device=\"cuda\"|\.cuda\(\)")
for path in sorted((repo / "tests").rglob("test_*.py")) if (repo / "tests").is_dir() else []:
    rel = path.relative_to(repo).as_posix()
    src = path.read_text()
    if not cuda_use.search(src) or rel == "tests/test_gpu_check.py":
        continue
    if not any(t.split("::")[0] == rel for t in targets):
        notes.append(f"warning: {rel} mentions CUDA but is not in the GPU test list")
    # conftest's requires_cuda is the gpu marker itself (skipped without a device)
    if "mark.gpu" not in src and "requires_cuda" not in src:
        notes.append(f"warning: {rel} has CUDA tests without the gpu marker (pytest -m gpu misses them)")

for note in notes:
    print(f"  {note}")
if missing:
    print("DRY RUN FAILED, missing or wrong:")
    for m in missing:
        print(f"  - {m}")
    sys.exit(1)
print("dry run ok: every file, test, flag and wheel name the GPU check uses resolves")
PYEOF
    return "${PIPESTATUS[0]}"
}

# ------------------------------------------------------------------------------------------ stage data

stage_data() {
    local shared="${SHARED_DATA:-$REPO/../shared/data}"
    local per_class="${STAGE_PER_CLASS:-16}"
    if [ ! -d "$shared/targets/deeppcb" ] || [ ! -f "$shared/anomaly_bank/MANIFEST.csv" ]; then
        echo "stage-data: $shared/targets/deeppcb or $shared/anomaly_bank is absent" >&2
        return 1
    fi
    rm -rf "$DATA_DIR" && mkdir -p "$DATA_DIR/bank" || return 1
    cp -r "$shared/targets/deeppcb" "$DATA_DIR/target" || return 1
    "$PY" - "$shared/anomaly_bank" "$DATA_DIR/bank" "$per_class" <<'PYEOF' || return 1
import csv
import shutil
import sys
from pathlib import Path

src, dst, per_class = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with (src / "MANIFEST.csv").open(newline="") as fh:
    reader = csv.DictReader(fh)
    fields, rows = reader.fieldnames, list(reader)
kept, count = [], {}
for row in rows:
    cls = row["class"]
    if count.get(cls, 0) >= per_class or not (src / cls / f"{row['id']}.png").exists():
        continue
    count[cls] = count.get(cls, 0) + 1
    (dst / cls).mkdir(parents=True, exist_ok=True)
    for name in (f"{row['id']}.png", f"{row['id']}_mask.png"):
        shutil.copy2(src / cls / name, dst / cls / name)
    kept.append(row)
with (dst / "MANIFEST.csv").open("w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept)
print(f"bank: {len(kept)} pairs, {dict(sorted(count.items()))}")
PYEOF
    echo "staged $(du -sh "$DATA_DIR" | cut -f1) in $DATA_DIR (git-ignored; name it in the device tool's carry)"
    echo "never commit it: the development data must not enter the repository"
}

# ------------------------------------------------------------------------------------------------ steps

step_env() {
    echo "== date: $(date -u)  host: $(hostname)  nproc: $(nproc)"
    echo "== git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null) $(git -C "$REPO" status --short 2>/dev/null | wc -l) changed files"
    nvidia-smi || echo "nvidia-smi failed"
    "$PY" - <<'PYEOF'
import platform
import sys

print("python", sys.version.split()[0], sys.executable, platform.machine())
import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"cc {p.major}.{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", f"{p.multi_processor_count} SMs")
ok = torch.cuda.is_available()
try:
    import cupy

    print("cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as exc:  # noqa: BLE001
    ok = False
    print("cupy FAILED:", type(exc).__name__, exc)
sys.exit(0 if ok else 1)  # a GPU check without CUDA or CuPy has failed already
PYEOF
}

step_install() {
    local status=0
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "== pip install --no-index --no-deps $(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l) wheels from $WHEELS"
        if ! "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir "$WHEELS"/*.whl; then
            echo "== the environment refused them: installing into /tmp/gpu_check_site (PYTHONPATH) instead"
            "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site \
                "$WHEELS"/*.whl || status=1
        fi
    else
        echo "== no wheels in $WHEELS (run benchmarks/fetch_gpu_wheels.sh on a CPU machine and carry the folder)"
        status=1
    fi
    echo "== pip install --no-deps -e . (the machine's torch stays)"
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e "$REPO" ||
        echo "== editable install failed: the project is imported from PYTHONPATH=$REPO"
    echo "== pip check"
    "$PY" -m pip check
    echo "== versions"
    "$PY" -m pip list 2>/dev/null | grep -iE "^(torch|torchvision|cupy|numpy|opencv|albumentations|albucore|kornia|anomalib|lightning|pydantic|typing.extensions|scipy|cai.aug) "
    echo "== imports"
    "$PY" - "${IMPORTS[@]}" <<'PYEOF' || status=1
import importlib
import sys

bad = 0
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        print(f"ok      {name} {getattr(module, '__version__', '')}")
    except Exception as exc:  # noqa: BLE001
        bad += 1
        print(f"FAILED  {name}: {type(exc).__name__}: {exc}")
sys.exit(1 if bad else 0)
PYEOF
    return "$status"
}

step_tests() {
    local timeout=() rc=0
    "$PY" -c "import pytest_timeout" 2>/dev/null && timeout=(--timeout 120)
    echo "== CUDA tests (one process)"
    "$PY" -m pytest -p no:cacheprovider -q -rsfE "${timeout[@]}" --junitxml="$OUT/tests_gpu.xml" "${GPU_TESTS[@]}" ||
        rc=1
    echo "== CPU agreement tests"
    "$PY" -m pytest -p no:cacheprovider -q -rsfE "${timeout[@]}" --junitxml="$OUT/tests_cpu.xml" "${CPU_TESTS[@]}" ||
        rc=1
    return "$rc"
}

step_throughput() {
    "$PY" benchmarks/speed/throughput.py --paths cupy torch-cuda torch-cpu opencv --sizes 256 512 \
        --batches 1 64 256 --cpu-batches 1 8 --threads 1 --repeats 3 --budget-s $((STEP_TIMEOUT - 20)) \
        --json "$OUT/throughput.json" --plot "$OUT/throughput.png"
}

step_step_share() {
    local bank=()
    [ -f "$DATA_DIR/bank/MANIFEST.csv" ] && bank=(--bank "$DATA_DIR/bank")
    "$PY" benchmarks/speed/step_share.py --device cuda --batches 8 32 --size 256 --anomalib-steps 3 \
        "${bank[@]}" --budget-s $((STEP_TIMEOUT - 15)) --json "$OUT/step_share.json"
}

step_detector() {
    local data bank
    if [ -d "$DATA_DIR/target/train/good" ] && [ -f "$DATA_DIR/bank/MANIFEST.csv" ]; then
        data="$DATA_DIR/target" && bank="$DATA_DIR/bank"
        echo "== data: staged real data (benchmarks/gpu_data: deeppcb and a bank subset)"
    else
        data="$OUT/toy/data" && bank="$OUT/toy/bank"
        echo "== data: the harness's toy data (benchmarks/gpu_data was not staged or not carried)"
        "$PY" -c "
from benchmarks.detector.toydata import make_bank, make_mvtec
make_mvtec('$data', n_train=48, n_good=12, n_defect=24, size=256)
make_bank('$bank', per_class=16, size=96)" || return 1
    fi
    "$PY" -m benchmarks.detector --data "$data" --bank "$bank" --synth cai-n --preset paper --epochs 2 \
        --per-image 2 --device cuda --threads 4 --no-authenticity --quiet --out "$OUT/detector"
    local rc=$?
    [ -f "$OUT/detector/results.md" ] && cat "$OUT/detector/results.md"
    return "$rc"
}

# ---------------------------------------------------------------------------------------------- summary

write_summary() {
    local args=() s
    for s in "${STEPS[@]}"; do
        args+=("$s" "${STATUS[$s]:-not run}" "${SECONDS_TAKEN[$s]:-}" "${FIGURE[$s]:-}")
    done
    "$PY" - "$OUT" "$BUDGET_S" "$(($(date +%s) - START))" "${args[@]}" <<'PYEOF'
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, budget, elapsed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rest = sys.argv[4:]
steps = [
    dict(step=rest[i], status=rest[i + 1], seconds=int(rest[i + 2]) if rest[i + 2] else None, figure=rest[i + 3])
    for i in range(0, len(rest), 4)
]


def read(name: str) -> str:
    p = out / name
    return p.read_text(errors="replace") if p.exists() else ""


def load(name: str):
    try:
        return json.loads(read(name))
    except ValueError:
        return None


def figure(step: str) -> str:
    log = read(f"{step}.log")
    if step == "env":
        m = re.search(r"^device (.+)$", log, re.M)
        t = re.search(r"^torch (\S+)", log, re.M)
        c = re.search(r"^cupy (\S+)", log, re.M)
        return "; ".join(x for x in (m and m[1], t and f"torch {t[1]}", c and f"cupy {c[1]}") if x)
    if step == "install":
        ok, bad = log.count("\nok      "), log.count("\nFAILED  ")
        check = log.split("== pip check", 1)[-1].split("== versions", 1)[0]
        problems = [line for line in check.splitlines() if " requires " in line or " has requirement " in line]
        known = [line for line in problems if "imagecodecs" in line]  # anomalib's, never imported: not carried
        pc = f"pip check: {len(problems) - len(known)} problems" + (" (+ imagecodecs, not carried)" if known else "")
        editable = "editable install failed, PYTHONPATH used; " if "editable install failed" in log else ""
        return f"{editable}imports {ok}/{ok + bad} ok; {pc}"
    if step == "tests":
        parts = []
        for name, label in (("tests_gpu.xml", "CUDA"), ("tests_cpu.xml", "CPU")):
            if not (out / name).exists():
                continue
            try:
                root = ET.parse(out / name).getroot()
            except ET.ParseError:
                parts.append(f"{label}: {name} unreadable")
                continue
            suites = [root] if root.tag == "testsuite" else list(root)
            n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
            parts.append(f"{label}: {passed} passed, {n['failures']} failed, {n['errors']} err, {n['skipped']} skipped")
        # on the GPU machine a test skipped for want of CUDA or CuPy is a failure of the check
        no_gpu = sum(
            int(m[1]) if m[1] else 1
            for line in log.splitlines()
            if line.startswith("SKIPPED") and re.search("CUDA|cupy", line)
            for m in [re.match(r"SKIPPED \[(\d+)\]", line) or re.match("()", "")]
        )
        if no_gpu:
            parts.append(f"{no_gpu} skipped for want of CUDA/CuPy (see tests.log)")
        return "; ".join(parts)
    if step == "throughput":
        data = load("throughput.json")
        if not data:
            return ""
        rows = [r for r in data.get("rows", []) if r.get("path") != "opencv"]
        rows = [r for r in rows if r.get("size") == 256] or rows
        gpu = [r for r in rows if r.get("path") in ("cupy", "torch-cuda")]
        # the default configuration at 256x256 batch 256 on the GPU (else the fastest row), then one anomaly
        at_256 = [r for r in gpu if r.get("batch") == 256]
        best = max(at_256 or gpu or rows, key=lambda r: r.get("images") or 0, default=None)
        if not best:
            return ""
        nan = float("nan")
        text = (
            f"{best['path']} 256px b{best['batch']}: default ({best.get('anomalies', '?')} anomalies/image) "
            f"{best.get('images') or nan:.0f} img/s, one anomaly {best.get('images_one') or nan:.0f} img/s"
        )
        text += f", {best.get('solves') or nan:.0f} solves/s, {best.get('iters') or nan:.1f} iters"
        if best.get("pipeline_floor_x"):
            text += f", {best['pipeline_floor_x']:.0f}x the floor"
        if best.get("ratio_opencv"):
            text += f", solve {best['ratio_opencv']:.1f}x seamlessClone's speed"
        cpu = data.get("default_vs_opencv")
        if cpu:
            text += (
                f"; CPU 1 thread: default image {cpu['image_x_opencv']:.2f}x one seamlessClone, "
                f"one anomaly {cpu['one_x_opencv']:.2f}x"
            )
        return text
    if step == "step_share":
        data = load("step_share.json")
        if not data:
            return ""
        parts = [f"b{r['batch']}: {100 * r['share']:.1f}%" for r in data.get("rows", [])]
        if data.get("anomalib"):
            a = data["anomalib"]
            parts.append(f"anomalib Draem {a.get('steps', 0)} steps, aug {100 * a.get('share', float('nan')):.1f}%")
        return "augmentation share " + ", ".join(parts) + " (target < 5%)"
    if step == "detector":
        m = re.search(r"^\|\s*cai-n\s*\|.*$", log, re.M)
        return m[0][:110] if m else ""
    return ""


for s in steps:
    if not s["figure"] and s["status"] not in ("not run",):
        try:
            s["figure"] = figure(s["step"])
        except Exception as exc:  # noqa: BLE001 - the summary must never fail
            s["figure"] = f"(no figure: {exc})"
    if not s["figure"] and s["status"].startswith("FAILED"):
        last = [line.strip() for line in read(f"{s['step']}.log").splitlines() if line.strip()]
        s["figure"] = last[-1][:140] if last else "(empty log)"
summary = dict(budget_s=budget, elapsed_s=elapsed, steps=steps, out=str(out))
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"GPU check summary ({elapsed} s of {budget} s; logs in {out})"]
for s in steps:
    took = f"{s['seconds']:>4}s" if s["seconds"] is not None else "     "
    lines.append(f"  {s['step']:<11} {s['status']:<24} {took}  {s['figure']}")
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
}

# -------------------------------------------------------------------------------------------------- main

case "$MODE" in
dry) dry_run "$OUT"; exit $? ;;
stage) stage_data; exit $? ;;
step) "step_$STEP"; exit $? ;;
esac
if [ -z "$OUT" ]; then
    usage >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
[ -n "$EXPORT" ] && { mkdir -p "$EXPORT" || exit 2; }

export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the project imports even if its install fails
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
# seconds each step may take at most, and what it leaves for the steps after it when they run
declare -A CAP=([env]=20 [install]=90 [tests]=150 [throughput]=170 [step_share]=90 [detector]=90)
declare -A FLOOR=([env]=5 [install]=30 [tests]=60 [throughput]=80 [step_share]=40 [detector]=40)
declare -A STATUS=() SECONDS_TAKEN=() FIGURE=()

selected() {
    [ -n "$ONLY" ] && [[ "$ONLY" != *",$1,"* ]] && [ "$1" != env ] && [ "$1" != install ] && return 1
    [[ "$SKIP" == *",$1,"* ]] && return 1
    return 0
}

# seconds for step $1: its cap, but never eating into the floors of the selected steps after it
slot() {
    local step="$1" after=0 seen=0 s
    for s in "${STEPS[@]}"; do
        if [ "$seen" = 1 ] && selected "$s"; then after=$((after + FLOOR[$s])); fi
        [ "$s" = "$step" ] && seen=1
    done
    local now left
    now=$(date +%s)
    left=$((DEADLINE - now - after))
    # a step always gets its own floor while the budget lasts, the later ones share what is left
    [ "$left" -lt "${FLOOR[$step]}" ] && left=$((DEADLINE - now < FLOOR[$step] ? DEADLINE - now : FLOOR[$step]))
    [ "$left" -gt "${CAP[$step]}" ] && left="${CAP[$step]}"
    echo "$left"
}

export_results() {
    write_summary >/dev/null 2>&1
    if [ -n "$EXPORT" ]; then
        tar -C "$OUT" -czf "$EXPORT/gpu_check.tar.gz" --exclude='*.npy' --exclude='*.npz' --exclude='*.pt' \
            --exclude='*.ckpt' --exclude=./toy . 2>/dev/null
        cp "$OUT/summary.txt" "$OUT/summary.json" "$EXPORT/" 2>/dev/null
        [ -f "$OUT/throughput.png" ] && cp "$OUT/throughput.png" "$EXPORT/"
    fi
    return 0
}

# run_step NAME: step_NAME in a timeout (this script again, with --step), stdout+stderr to OUT/NAME.log
run_step() {
    local name="$1"
    if ! selected "$name"; then
        STATUS[$name]=skipped
        FIGURE[$name]="not selected"
        return 0
    fi
    local t
    t=$(slot "$name")
    if [ "$t" -lt 5 ]; then
        STATUS[$name]=skipped
        FIGURE[$name]="no time left in the ${BUDGET_S} s budget"
        return 0
    fi
    echo "[gpu_check] $(date -u +%H:%M:%S) $name (timeout ${t} s)"
    local t0 rc
    t0=$(date +%s)
    STEP_TIMEOUT="$t" timeout -k 10 "$t" bash "$SELF" --step "$name" "$OUT" >"$OUT/$name.log" 2>&1
    rc=$?
    SECONDS_TAKEN[$name]=$(($(date +%s) - t0))
    if [ "$rc" = 0 ]; then
        STATUS[$name]=ok
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        STATUS[$name]="FAILED (timeout ${t} s)"
    else
        STATUS[$name]="FAILED (rc $rc)"
    fi
    echo "[gpu_check]          $name: ${STATUS[$name]} in ${SECONDS_TAKEN[$name]} s"
    export_results
}


run_step env
run_step install
# wheels that only a --target install took
[ -d /tmp/gpu_check_site ] && export PYTHONPATH="/tmp/gpu_check_site:$PYTHONPATH"
run_step tests
run_step throughput
run_step step_share
run_step detector
export_results
echo
cat "$OUT/summary.txt"
for s in "${STEPS[@]}"; do
    case "${STATUS[$s]:-not run}" in ok | skipped) ;; *) exit 1 ;; esac
done
exit 0
