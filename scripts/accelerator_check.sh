#!/usr/bin/env bash
# One prepared check for a GPU / TPU machine (docs/performance.md, "Accelerator check"):
#
#   scripts/accelerator_check.sh                 # on the accelerator: tests, then the GPT-2 124M bench
#   scripts/accelerator_check.sh --dry-run       # on CPU: the same path, a tiny config (~1-3 min)
#   scripts/accelerator_check.sh --fetch-wheels  # here, with a registry: the wheels the machine lacks
#
# The machine may reach no package registry: the project runs from this source tree (PYTHONPATH),
# and what its Python lacks (grain, pytest, ...) is installed from .accel_wheels/ (an ignored
# folder, filled beforehand by --fetch-wheels and carried along) with pip --no-index.
# Steps:
#   1. install the missing packages from .accel_wheels/ (when the folder is there);
#   2. pytest -m accelerator: the tests that only mean something on a GPU / TPU (they skip on CPU;
#      the dry run runs them too, to show they collect and skip);
#   3. scripts/accelerator_bench.py: MyLM unrolled / scanned, with and without FP8, and nanoGPT
#      with torch.compile, GPT-2 124M bf16 at T 1024, each in its own process; one JSON.
# Output: $OUT (the device tool's output folder) if set, else runs/accelerator/; the JSON is
# accelerator_check.json there, the logs beside it. Sized for < 10 minutes on an H100-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  --fetch-wheels)
    # The packages the project imports that a machine with jax/flax/optax/orbax/torch may lack.
    # PYVER: the accelerator machine's Python (e.g. 3.11), default this machine's.
    PYVER="${PYVER:-$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
    mkdir -p .accel_wheels
    # --no-deps and an explicit list: the carried folder must stay small (a call carries 64 MiB),
    # and numpy, absl, etils, protobuf come with jax / orbax on the machine.
    python -m pip download --dest .accel_wheels --only-binary=:all: --no-deps --python-version "$PYVER" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      "grain>=0.2.12" array-record cloudpickle dm-tree more-itertools "pyyaml>=6" "tensorboardX>=2.6" \
      "regex>=2023.0" "filelock>=3.12" "tqdm>=4.60" "pytest>=8" pluggy iniconfig packaging
    du -sh .accel_wheels
    exit 0 ;;
  "") ;;
  *) echo "accelerator_check.sh: unknown argument '$1' (expected --dry-run or --fetch-wheels)" >&2; exit 2 ;;
esac

OUT_DIR="${OUT:-$ROOT/runs/accelerator}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export JAX_ENABLE_COMPILATION_CACHE=false  # compile times measured from scratch

# 1. Missing packages, from the carried wheels only.
if [ -d .accel_wheels ]; then
  for pair in grain:grain yaml:pyyaml tensorboardX:tensorboardX regex:regex filelock:filelock pytest:pytest \
              tqdm:tqdm; do
    module="${pair%%:*}"; package="${pair##*:}"
    python -c "import $module" 2>/dev/null || \
      python -m pip install --no-index --find-links .accel_wheels --quiet "$package" || \
      echo "accelerator_check.sh: could not install $package from .accel_wheels" >&2
  done
fi

python - <<'EOF' | tee "$OUT_DIR/environment.txt"
import importlib, platform, sys
print("python", sys.version.split()[0], platform.machine())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "torch"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # report and go on: the steps below say what each one needs
        print(name, "missing:", type(e).__name__)
import jax
print("devices", jax.devices())
EOF

# 2. The accelerator tests (-o addopts= drops the suite's "-n 2": xdist may be missing here).
status=0
python -m pytest -q -o addopts="" -p no:cacheprovider -m accelerator -rs \
  tests/test_attention_impl.py tests/test_fp8.py 2>&1 | tee "$OUT_DIR/accelerator_tests.log" || status=$?

# 3. The measurements.
bench_args=(--out "$OUT_DIR/accelerator_check.json" --work "$OUT_DIR/work")
[ "$DRY" = 1 ] && bench_args+=(--dry-run)
python scripts/accelerator_bench.py "${bench_args[@]}" 2>&1 | tee "$OUT_DIR/accelerator_bench.log" || status=$?
echo "accelerator_check.sh: results in $OUT_DIR (tests and bench exit status: $status)"
exit "$status"
