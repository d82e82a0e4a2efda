#!/usr/bin/env bash
# Installs what `--features mpi` needs to build and run: Open MPI (library, headers, mpirun)
# and libclang for the bindings' generator. Does nothing when they are already there.
set -euo pipefail
if command -v mpirun >/dev/null && [ -e /usr/include/x86_64-linux-gnu/openmpi/include/mpi.h -o -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
   && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
