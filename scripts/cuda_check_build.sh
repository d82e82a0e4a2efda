#!/usr/bin/env bash
# Compile-checks the GPU code paths (features `cuda`, `mpi`, `nccl`) on a machine without a GPU,
# with clippy's -D warnings: .ci/run calls it after the CPU steps.
#
# nvcc, the CUDA headers and CCCL (thrust/cub) come from NVIDIA's PyPI wheels, installed into a
# venv outside the repository. The cu12 wheels (`nvidia-cuda-nvcc-cu12`) carry ptxas but no
# nvcc; the CUDA 13 wheels carry the whole compiler, laid out as a CUDA root under
# site-packages/nvidia/cu13. candle-kernels' build script runs nvcc on its kernels even under
# `cargo check`, for the compute capability in CUDA_COMPUTE_CAP (no GPU is queried). A check
# never links, so no CUDA or NCCL libraries are needed (cudarc links them at build time only).
#
# Idempotent: the venv and the apt packages are installed once. It checks into the same target
# directory as the CPU build: cargo keeps the cuda-featured crates beside the CPU ones, and the
# dependencies the features do not touch (tokenizers, image, arrow, axum, …) are reused from
# `.ci/run`'s earlier clippy step instead of being checked again.
#
# Environment: CUDA_VENV (default /tmp/cuda-venv), CUDA_COMPUTE_CAP (default 80),
# CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."

# One CUDA release for every wheel; cudarc 0.19 knows CUDA up to 13.4.
CUDA_WHEELS_VERSION=13.2.86
CUDA_VENV=${CUDA_VENV:-/tmp/cuda-venv}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
export CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0 RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}

# System packages: MPI and libclang (rsmpi's bindings), python3-venv (for pip).
missing=()
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev openmpi-bin)
compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null || compgen -G '/usr/lib/*/libclang*.so*' >/dev/null \
    || missing+=(libclang-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "== apt-get install ${missing[*]}"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cuda_root() {
    "$CUDA_VENV/bin/python" -c 'import os, nvidia; print(os.path.join(nvidia.__path__[0], "cu13"))'
}
if ! [[ -x "$CUDA_VENV/bin/python" ]]; then
    python3 -m venv "$CUDA_VENV"
fi
if ! root=$(cuda_root 2>/dev/null) || ! "$root/bin/nvcc" --version 2>/dev/null | grep -q "V$CUDA_WHEELS_VERSION"; then
    echo "== pip install CUDA $CUDA_WHEELS_VERSION compiler wheels into $CUDA_VENV"
    "$CUDA_VENV/bin/pip" install -q --disable-pip-version-check \
        "nvidia-cuda-nvcc==$CUDA_WHEELS_VERSION" "nvidia-nvvm==$CUDA_WHEELS_VERSION" \
        "nvidia-cuda-crt==$CUDA_WHEELS_VERSION" "nvidia-cuda-runtime==$CUDA_WHEELS_VERSION" \
        "nvidia-cuda-cccl==$CUDA_WHEELS_VERSION"
    root=$(cuda_root)
fi
export CUDA_HOME="$root" CUDA_PATH="$root" CUDA_ROOT="$root" NVCC="$root/bin/nvcc"
export PATH="$root/bin:$PATH"
nvcc --version | tail -n 2

echo "== cargo clippy -p clip --features cuda,mpi,nccl -- -D warnings (sm_$CUDA_COMPUTE_CAP, $CARGO_TARGET_DIR)"
cargo clippy -p clip --features cuda,mpi,nccl -- -D warnings
