#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment at <repo>/.venv.
#
# Idempotent: a stamp keyed by the hash of this script and the requirement files makes a second run a
# no-op. mmcv 2.1.0 has no wheel for this torch, so it is built from source with its compiled ops; the
# built wheel is cached under $ACOUPLENET_WHEEL_CACHE (default ~/.cache/acouplenet/wheels) in a folder
# keyed by the torch version, Python version and machine, because pip's own cache would hand an mmcv
# built against one torch to another and fail at import time.
#
# Environment:
#   PYTHON                   interpreter used to create the venv (default: python3, must be 3.10-3.12)
#   ACOUPLENET_WHEEL_CACHE   where built mmcv wheels are kept
#   MAX_JOBS                 parallel compile jobs for mmcv (default: number of cores)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0

log() { printf '[setup_env] %s\n' "$*" >&2; }

stamp_key() {
  local f
  for f in "$ROOT/tools/setup_env.sh" "$ROOT"/requirements/*.txt "$ROOT/pyproject.toml"; do
    if [[ -f "$f" ]]; then cat "$f"; fi
  done | sha256sum | cut -c1-16
}
STAMP="$VENV/.acouplenet-setup-$(stamp_key)"
if [[ -f "$STAMP" ]]; then
  exit 0
fi

# torch 2.14.1 has wheels for Python >= 3.10; numpy < 2 (mmcv 2.1 / mmdet 3.3) has none for 3.13.
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)'; then
  log "error: $PYTHON is $("$PYTHON" -V 2>&1); this setup supports Python 3.10-3.12 (torch $TORCH_VERSION needs 3.10 or newer; pyproject.toml's requires-python; CI runs 3.11). Set PYTHON=python3.11."
  exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=(-c "$ROOT/requirements/constraints.txt")

log "installing build tools and torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -r "$ROOT/requirements/build.txt"

TORCH_TAG="$("$VENV/bin/python" -c 'import torch, sys, platform; print(f"torch-{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')"
# mmcv compiles its CUDA ops where torch sees a GPU (or FORCE_CUDA=1): such a wheel is cached apart.
if [[ "${FORCE_CUDA:-0}" == 1 ]] || "$VENV/bin/python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  WITH_CUDA=1
  TORCH_TAG="$TORCH_TAG-cuda"
else
  WITH_CUDA=0
fi
CACHE_DIR="${ACOUPLENET_WHEEL_CACHE:-$HOME/.cache/acouplenet/wheels}/$TORCH_TAG"

mmcv_ops_ok() {
  "$VENV/bin/python" - "$MMCV_VERSION" "$WITH_CUDA" <<'EOF' >/dev/null 2>&1
import sys
import mmcv
from mmcv.ops import nms, RoIPool  # noqa: F401  (fails without compiled ops)
cuda_ok = True
if sys.argv[2] == '1':
    # Run a CUDA kernel rather than ask get_compiling_cuda_version(), which segfaults in mmcv 2.1.0
    # built against torch 2.11 / CUDA 13.0 (seen on H100s) while every op works.
    # (A wheel without CUDA ops raises here, which exits with 1 as well.)
    import torch
    _, keep = nms(torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]], device='cuda'),
                  torch.tensor([0.9, 0.8], device='cuda'), 0.5)
    cuda_ok = keep.tolist() == [0]
sys.exit(0 if mmcv.__version__ == sys.argv[1] and cuda_ok else 1)
EOF
}

if ! mmcv_ops_ok; then
  shopt -s nullglob
  cached=("$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl)
  shopt -u nullglob
  if (( ${#cached[@]} == 0 )); then
    log "building mmcv $MMCV_VERSION with ops against $TORCH_TAG (10-20 minutes on 2 cores, once per torch version)"
    mkdir -p "$CACHE_DIR"
    build_dir="$(mktemp -d "$CACHE_DIR/.build.XXXXXX")"
    trap 'rm -rf "$build_dir"' EXIT
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$build_dir" "mmcv==$MMCV_VERSION"
    tar -xzf "$build_dir/mmcv-$MMCV_VERSION.tar.gz" -C "$build_dir"
    src="$build_dir/mmcv-$MMCV_VERSION"
    # mmcv 2.1.0 compiles with -std=c++17; the headers of torch >= 2.10 refuse anything below C++20.
    aten_h="$("$VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "ATen.h"))')"
    if grep -q 'C++20' "$aten_h"; then
      sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/setup.py"
    fi
    # With CUDA (a GPU machine), torch's CUDA headers include cuSPARSE/cuBLAS/cuSOLVER headers that a
    # toolkit of nvcc alone lacks ('cusparse.h: No such file'); torch's pip dependencies ship them.
    if (( WITH_CUDA )); then
      nvidia_include="$("$VENV/bin/python" -c 'import glob, os, torch; print(":".join(glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "*", "include"))))')"
      export CPATH="${nvidia_include}${CPATH:+:$CPATH}"
    fi
    # --no-build-isolation: mmcv's setup.py imports the torch installed above to compile against it.
    # --no-cache-dir: pip's cache is not keyed by torch version (see header).
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
      --no-cache-dir -w "$build_dir/wheel" "$src"
    built=("$build_dir"/wheel/mmcv-*.whl)
    # Move into the cache only once complete: an interrupted build never leaves a wheel that looks whole.
    mv "${built[0]}" "$CACHE_DIR/"
    cached=("$CACHE_DIR/$(basename "${built[0]}")")
  else
    log "using cached mmcv wheel ${cached[0]}"
  fi
  "${PIP[@]}" install -q --no-deps --force-reinstall "${cached[0]}"
fi

log "installing mmengine, mmdet, openmim and the rest"
# mmcv's own runtime requirements (it was installed with --no-deps) come with mmengine/mmdet plus these.
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" addict packaging Pillow pyyaml yapf \
  -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" -r "$ROOT/requirements/mim.txt"
"${PIP[@]}" install -q --no-deps openmim==0.3.9

if [[ -f "$ROOT/pyproject.toml" ]]; then
  log "installing the project (editable) so that mim and custom_imports find it from any directory"
  "${PIP[@]}" install -q "${CONSTRAINTS[@]}" --no-deps --no-build-isolation -e "$ROOT"
  # `mim search/download acouplenet` read <site-packages>/projects/.mim/model-index.yml, where a wheel
  # puts the index; an editable install keeps it in the repo, so link it there (`projects` is a namespace
  # package: the extra folder holds only the link and imports still resolve to the repo's modules).
  PURELIB="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$PURELIB/projects"
  ln -sfn "$ROOT/projects/.mim" "$PURELIB/projects/.mim"
fi

if ! mmcv_ops_ok; then
  log "error: mmcv $MMCV_VERSION with compiled ops does not import$( (( WITH_CUDA )) && echo ' or its CUDA nms does not run'); delete $CACHE_DIR and rerun"
  exit 1
fi
"$VENV/bin/python" -c 'import mmdet, mmengine, torchvision; print("mmdet", mmdet.__version__, "mmengine", mmengine.__version__, "torchvision", torchvision.__version__)'

rm -f "$VENV"/.acouplenet-setup-*
touch "$STAMP"
log "environment ready: $VENV"
