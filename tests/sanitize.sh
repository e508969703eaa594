#!/usr/bin/env bash
# Runs pyattn's tests against an ASan + UBSan build of the extension (docs/sanitizers.md).
#
#   bash tests/sanitize.sh                 # the kernel, functional, threads and loader tests (CI runs this)
#   bash tests/sanitize.sh tests           # the whole suite (about 20 minutes on 2 cores)
#   bash tests/sanitize.sh tests/test_gemm.py -k packed
#
# The extension is built into build/sanitize and put, with a copy of the Python sources, in
# build/sanitize/pkg, which goes first on PYTHONPATH. python itself is not instrumented, so the ASan
# runtime is preloaded. Any report aborts the process: pytest then exits non-zero and the report is on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=$root/build/sanitize
py=${PYTHON:-python3}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPYATTN_SANITIZE=address,undefined \
      -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" > "$build.log" 2>&1 || { cat "$build.log"; exit 1; }
cmake --build "$build" -j 2 >> "$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }

pkg=$build/pkg
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r pyattn "$pkg/"
rm -f "$pkg"/pyattn/_core*.so          # a development symlink, if any: never write through it
cp "$build"/_core*.so "$pkg/pyattn/"

if [ $# -eq 0 ]; then
  # everything that exercises the C++ core directly, the file loaders and the fuzzers; the model tests
  # against torch / CTranslate2 add hours of -O1 time and little C++ that these do not reach.
  set -- tests/test_cpu.py tests/test_gemm.py tests/test_ops.py tests/test_attention.py tests/test_mha.py \
         tests/test_nn.py tests/test_scores.py tests/test_rnn.py tests/test_errors.py tests/test_properties.py \
         tests/test_numerics.py tests/test_threads.py tests/test_ct2_reader.py tests/test_fuzz_loaders.py \
         tests/test_fuzz_functional.py tests/test_weight_types.py
fi

asan=$(g++ -print-file-name=libasan.so)
ubsan=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan:$ubsan"
# detect_leaks=0: CPython and numpy keep objects alive to exit on purpose; leaks are tested in test_memory.py.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:check_initialization_order=1:strict_init_order=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONMALLOC=malloc                # let ASan see the interpreter's allocations too
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
export PYATTN_SANITIZED=1

# a sanitizer that is not armed cannot fail: check that the extension is instrumented and the runtime live
so=$(ls "$pkg"/pyattn/_core*.so)
syms=$(nm -D "$so")  # not `nm | grep -q`: grep quits at the first match, and pipefail then sees nm's SIGPIPE
grep -q __asan_report_load <<< "$syms" || { echo "sanitize.sh: $so has no ASan instrumentation" >&2; exit 1; }
grep -q __ubsan_handle <<< "$syms" || { echo "sanitize.sh: $so has no UBSan instrumentation" >&2; exit 1; }
if "$py" -c "import ctypes; b = ctypes.create_string_buffer(16); ctypes.memset(ctypes.addressof(b) + 16, 0, 64)" \
     2> /dev/null; then
  echo "sanitize.sh: a heap overflow went unreported: the ASan runtime is not active" >&2; exit 1
fi

# the tests' paths are given relative to the root; run from tests/ so that the copy, not the source tree, is
# imported (pytest's rootdir conftest still applies)
args=()
for a in "$@"; do
  if [ -e "$a" ]; then args+=("$root/$a"); else args+=("$a"); fi
done
cd "$root/tests"
"$py" -c "import pyattn, sys; assert '$pkg' in pyattn.__file__, pyattn.__file__; print('sanitized pyattn:', pyattn.__file__)"
# --capture=sys: an aborting report must reach the terminal, not a captured file descriptor
exec "$py" -m pytest -q -p no:cacheprovider --capture=sys "${args[@]}"
