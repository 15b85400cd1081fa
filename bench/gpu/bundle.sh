#!/usr/bin/env bash
# Packs what bench/gpu/measure.sh needs on the lent GPU machine, which has nvcc but none of libuv,
# msgpack-c or Criterion and cannot fetch: the binaries built here (cudart is static) and the shared
# libraries they load (in bin.tar.xz, ~6 MB), the dev prompts, and SmolLM2 split into parts that fit
# one call's 64 MiB.
#   bench/gpu/bundle.sh [BUNDLE_DIR=.gpu] [PROMPTS=../shared/bench/prompts-dev.jsonl]
# BUNDLE_DIR must be ignored by git (.git/info/exclude) and named in the device call's carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.gpu}
prompts=${2:-../shared/bench/prompts-dev.jsonl}
model=${SPECD_MODEL_DIR:-.models}/smollm2-135m-instruct-q4_1.gguf
make -j"$(nproc)" all >/dev/null
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib" "$dir/model"
bins="build/bin/bench_roofline build/bin/bench_spec build/bin/specd-mkmodel build/bin/specd-run
      build/tests/kernels/test_backend_conformance build/tests/kernels/test_profile build/tests/model/test_model
      build/tests/engine/test_engine build/tests/engine/test_engine_batch"
for b in $bins; do
    cp "$b" "$dir/bin/"
    # Every shared library but glibc's own.
    ldd "$b" | awk '/=> \// && $3 !~ /\/(libc|libm|libpthread|libdl|librt|libresolv)\.so/ { print $3 }' |
        while read -r lib; do cp -nL "$lib" "$dir/lib/"; done
done
# The binaries (each holds its kernels and cudart) and libraries shrink about sevenfold: one archive.
tar -C "$dir" -cJf "$dir/bin.tar.xz" bin lib
rm -rf "$dir/bin" "$dir/lib"
cp "$prompts" "$dir/prompts-dev.jsonl"
if [ -f "$model" ]; then
    split -b 36M -d "$model" "$dir/model/smollm2.part"
    sha256sum "$model" | awk '{ print $1 }' >"$dir/model/smollm2.sha256"
else
    echo "bundle: $model missing (make models): the speedup step will be skipped" >&2
fi
du -sh "$dir"/* >&2
