#!/usr/bin/env bash
# Builds the `cuda` binary on a machine with no GPU and no CUDA toolkit, from PyPI's CUDA 13.0
# wheels, and packs it for a GPU machine that cannot reach any registry (carry the packed file,
# unpack it there; see README "GPU").
#
#   bench/cuda-build.sh [OUT_DIR]      (default: .cuda in the repository root, git-ignored)
#
# Environment: CUDA_VENV (default /tmp/cu13), CUDA_COMPUTE_CAP (default 90: H100/H200),
# CARGO_TARGET_DIR for the build (default /tmp/target-cuda; a full build, ~17 min on 2 cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cuda}
venv=${CUDA_VENV:-/tmp/cu13}
target=${CARGO_TARGET_DIR:-/tmp/target-cuda}

# 1. nvcc, headers and the libraries candle links (cublas, curand, nvrtc, cudart), all 13.0
#    (nvcc 13.0 with a newer crt/nvvm wheel fails; the driver on the GPU machines is CUDA 13.0)
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" \
  "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cublas==13.0.*" \
  "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-curand==10.4.*"
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')

# 2. the unversioned names the linker looks for
for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "$cuda/lib/lib$l.so"; done
ln -sf libcurand.so.10 "$cuda/lib/libcurand.so"

# 3. libcuda is the GPU driver's own library, not on PyPI: link against a stub with its soname
#    that defines every driver function cudarc declares; the driver's libcuda.so.1 is the one
#    loaded at run time
(cd "$root" && cargo fetch -q)
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
grep -oE "fn (cu[A-Z][A-Za-z0-9_]*)\(" "$cudarc/src/driver/sys/mod.rs" | sed 's/fn //; s/(//' |
  sort -u | sed 's/.*/int &(void) { return 999; }/' >"$cuda/lib/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/libcuda.so" "$cuda/lib/cuda_stub.c"

# 4. the build (candle-kernels compiles its PTX and static kernels with nvcc for one arch)
(cd "$root" && CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
  PATH="$cuda/bin:$PATH" cargo build --release --features cuda --target-dir "$target")

# 5. stripped and compressed (83 MB → 16 MB: the device tool carries at most 64 MiB)
mkdir -p "$out"
strip -o "$out/latent-atlas" "$target/release/latent-atlas"
gzip -9 -f "$out/latent-atlas"
ls -la "$out"
echo "built; libraries needed at run time: $(ldd "$target/release/latent-atlas" | awk '/not found/ {print $1}' | tr '\n' ' ')"
