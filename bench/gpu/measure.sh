#!/usr/bin/env bash
# The GPU measurement (run on the lent machine, from the repository root, after bench/gpu/bundle.sh
# here): the CUDA conformance suite, copy bandwidth and the decode roofline of 1.5B- and 0.5B-shaped
# models, verify(γ+1)/decode(1) for γ = 1…16, greedy identity of speculative vs target-only decoding
# on the GPU, the speculative speedup on the dev prompts, sampled decoding with its rows processed and
# verified on the GPU against the same on the host (the A/B of sampling on the device), and last the
# model and engine suites with the GPU as their device, op by op and then with steps replayed as graphs
# (minutes: every step of their tiny models pays the GPU's launch costs, where the CPU takes
# microseconds). Results go to $OUT (or /tmp/specd-out).
#
#   bench/gpu/measure.sh [STEP...]     STEP: info conformance roofline identity tensor-cores prefill
#                                      context speedup sampled suites kernels (default: all, in that
#                                      order)
#
# Everything the bundle brings is kept under /tmp/specd-gpu, which outlives a call while the machine
# stays warm: SmolLM2 travels in parts over several calls and the speedup step runs once all are there.
# The timing models are synthetic (random weights) with the shapes of Qwen2.5-Coder 1.5B (Q4_K) and
# 0.5B (Q4_0, as its width 896 is no multiple of the K-quants' 256), generated on the machine; the
# bytes and shapes, not the weights, set the time. SPECD_GPU_DEVICE=cpu SPECD_GPU_SMALL=1 runs the
# same steps on small shapes on a machine without a GPU, to check the script itself. The roofline
# step gives per-op profiles of 64 decode steps and 64 verification passes of 8 positions (host and
# device time per kind of op: where a step's time goes when it falls short of the roofline) and decode
# steps of 8 sequences at once (--seqs 8, as the engine batches concurrent requests), then times the
# target again with each step recorded and replayed as a CUDA graph (--graphs), for the A/B, with and
# without programmatic dependent launches between its kernels (SPECD_CUDA_PDL=0), and with them but
# without the matmuls' prefetch of their weights before they wait (SPECD_CUDA_PREFETCH=0), with the
# norms and ropes after one-row matmuls launched alone (SPECD_CUDA_AFTER_MATMUL=0), and its steps of 8
# sequences with each sequence's store and attention launched alone (SPECD_CUDA_JOIN=0); the speedup
# step also runs adaptive γ with graphs, and first the synthetic draft's greedy runs with their tokens
# kept on the GPU and crossing every pass (bench_spec --draft-ids backend|host). The tensor-cores step is the A/B of the quantised
# matmuls on int8 tensor cores (kern_backend_config.tensor_cores, opt-in): the conformance suite with
# them, the target's roofline and verify/decode ratios with them (op by op, with a profile, and with
# graphs), and greedy identity with them. The prefill step times a 2048-token prompt of the target in
# steps of 512 tokens three ways: dp4a, int8 tensor cores, and cuBLAS on F16 copies of the weights
# (kern_backend_config.blas_prefill, opt-in), then with tensor cores once more with attention's blocks
# of one (query, head) pair (SPECD_CUDA_ATT_TILE=0, the A/B of its blocks of 8), then greedy identity
# with cuBLAS prefills. The context step times decode and verification of the target at position
# 4000 (its profile: what attention costs when each of a KV head's 6 query heads reads 4000 keys).
# The kernels step profiles each kernel of the target's steady-state steps replayed as graphs, decode
# steps and verification passes of 8 positions, dp4a and tensor cores, with Nsight Compute (ncu, on
# the machine; bench_roofline --trace marks the passes, bench/gpu/ncu_table.py makes the tables): each
# kernel's own time and DRAM bytes, and their sum against the wall time of the same passes without the
# profiler, which says how much of a step is kernels and how much the time between them; then the wall
# time of the same passes with every quantised row a warp's (SPECD_CUDA_WIDE=0, the A/B of mmv_wide).
#
# With the device tool (64 MiB travel per call; the bundle's parts are sized for two calls; seen on
# an H200 in 2026-11: ~35 s to start a machine, ~150 s for the steps of prefill to sampled). Three
# calls of 300 s and a start do not fit a session's 15 minutes of device time, so what the issue's
# must-shows need comes first: the roofline, verify/decode and identity, then the kernels' profile
# that explains decode's gap and the tensor cores' verify/decode; the rest last.
#   1. here: bench/gpu/bundle.sh
#   2. run carry=[.gpu/bin.tar.xz, .gpu/prompts-dev.jsonl, .gpu/model/smollm2.part00,
#      .gpu/model/smollm2.sha256] (~48 MB with the tree), command
#      "bench/gpu/measure.sh info conformance roofline identity", timeout 300
#   3. at once (while warm): command "bench/gpu/measure.sh kernels tensor-cores", timeout 300 (nothing
#      to carry; the synthetic models the call before made are reused)
#   4. at once, with what is left: carry=[.gpu/model/smollm2.part01, .gpu/model/smollm2.part02]
#      (~64 MB), command "bench/gpu/measure.sh prefill context speedup sampled suites"
#   5. give_back; commit $OUT's tables as bench/results/<date>-<gpu>.md with these commands.
set -uo pipefail
cd "$(dirname "$0")/../.."
stash=/tmp/specd-gpu
out=${OUT:-/tmp/specd-out}
device=${SPECD_GPU_DEVICE:-cuda}
mkdir -p "$stash/model" "$out"
if [ -f .gpu/bin.tar.xz ]; then
    tar -C "$stash" -xJf .gpu/bin.tar.xz
    cp -f .gpu/prompts-dev.jsonl "$stash/"
fi
[ -d .gpu/model ] && cp -f .gpu/model/* "$stash/model/" 2>/dev/null
B=$stash/bin
export LD_LIBRARY_PATH=$stash/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cuBLAS (blas_prefill) is loaded at run time: from the loader's path, the toolkit's lib64, or a wheel's
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.' && ! ls /usr/local/cuda/lib64/libcublas.so.* >/dev/null 2>&1; then
    cublas=$(find /usr/lib /usr/local /opt $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' \
        2>/dev/null) -name 'libcublas.so.*' 2>/dev/null | head -1)
    [ -n "$cublas" ] && export LD_LIBRARY_PATH=$(dirname "$cublas"):$LD_LIBRARY_PATH
fi
[ -x "$B/bench_roofline" ] || { echo "measure: no bundle (run bench/gpu/bundle.sh and carry .gpu)" >&2; exit 2; }

if [ -n "${SPECD_GPU_SMALL:-}" ]; then
    target_shape="--layers 2 --dim 256 --heads 4 --kv-heads 2 --ff 512 --vocab 4096"
    draft_shape="--layers 1 --dim 128 --heads 2 --kv-heads 1 --ff 256 --vocab 4096"
else # Qwen2.5-Coder 1.5B and 0.5B (both tie the output to the embedding)
    target_shape="--layers 28 --dim 1536 --heads 12 --kv-heads 2 --ff 8960 --vocab 151936"
    draft_shape="--layers 24 --dim 896 --heads 14 --kv-heads 2 --ff 4864 --vocab 151936"
fi
target=$stash/synth-target.gguf
draft=$stash/synth-draft.gguf
make_models() { # in the background while the conformance suite runs; reused while the machine is warm
    [ -f "$target" ] || "$B/specd-mkmodel" -o "$target" --arch qwen2 --type Q4_K --tied --ctx 4096 $target_shape
    [ -f "$draft" ] || "$B/specd-mkmodel" -o "$draft" --arch qwen2 --type Q4_0 --tied --ctx 4096 $draft_shape
}
make_models >"$out/mkmodel.log" 2>&1 &
models_pid=$!
models_rc=
models_ready() {
    [ -n "$models_rc" ] || { wait "$models_pid"; models_rc=$?; }
    [ "$models_rc" -eq 0 ] || { cat "$out/mkmodel.log"; return 1; }
}

steps=${*:-info conformance roofline identity tensor-cores prefill context speedup sampled suites kernels}
status=0
for step in $steps; do
    t_step=$SECONDS
    echo "=== $step (at $SECONDS s)"
    case $step in
    info)
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv \
            2>&1 | tee "$out/device.txt"
        echo "libcublas: $( (ldconfig -p 2>/dev/null | grep -o '/[^ ]*libcublas\.so\.[0-9]*' ; ls /usr/local/cuda/lib64/libcublas.so.* \
            2>/dev/null) | head -1) LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee -a "$out/device.txt"
        ;;
    conformance | suites)
        # graphs: steps replayed as graphs; tc: quantised matmuls on tensor cores; blas: prefills through cuBLAS
        tests="test_backend_conformance test_profile"
        [ "$step" = suites ] &&
            tests="test_model test_engine_batch test_engine graphs:test_model graphs:test_engine_batch
                   graphs,tc:test_model graphs,tc:test_engine_batch blas:test_engine_batch"
        for t in $tests; do
            echo "== $t (from $((SECONDS - t_step)) s)" | tee -a "$out/$step.txt"
            opts=
            [ "${t#*:}" != "$t" ] && opts=${t%%:*} && t=${t#*:}
            graphs=0 tc=0 blas=0
            case ",$opts," in *,graphs,*) graphs=1 ;; esac
            case ",$opts," in *,tc,*) tc=1 ;; esac
            case ",$opts," in *,blas,*) blas=1 ;; esac
            SPECD_REQUIRE_CUDA=$([ "$device" = cuda ] && echo 1) SPECD_TEST_DEVICE=$device SPECD_TEST_GRAPHS=$graphs \
                SPECD_TEST_TENSOR_CORES=$tc SPECD_TEST_BLAS_PREFILL=$blas "$B/$t" --jobs 1 2>&1 |
                tee -a "$out/$step.txt" |
                grep -E 'FAIL|Synthesis|!!!'
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        done
        ;;
    roofline)
        models_ready || { status=1; continue; }
        for m in target draft; do
            "$B/bench_roofline" --device "$device" --model "$stash/synth-$m.gguf" --pos 512 --gamma-max 16 \
                --copy-mib 1024 --profile 64 --seqs 8 | tee "$out/roofline-$m.md" || status=1
        done
        # the same target with each step recorded as a CUDA graph (opt-in), for the A/B; then the same
        # without programmatic dependent launches between the graph's kernels, without the prefetches,
        # and with every norm and rope launched alone; then steps of 8 sequences with a store and an
        # attention launch a sequence
        "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 8 --copy-mib 256 --graphs \
            --seqs 8 | tee "$out/roofline-target-graphs.md" || status=1
        SPECD_CUDA_PDL=0 "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 8 \
            --copy-mib 256 --graphs | tee "$out/roofline-target-graphs-nopdl.md" || status=1
        SPECD_CUDA_PREFETCH=0 "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 8 \
            --copy-mib 256 --graphs | tee "$out/roofline-target-graphs-noprefetch.md" || status=1
        SPECD_CUDA_AFTER_MATMUL=0 "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 1 \
            --copy-mib 256 --graphs | tee "$out/roofline-target-graphs-noafter.md" || status=1
        SPECD_CUDA_JOIN=0 "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 1 \
            --copy-mib 256 --graphs --seqs 8 | tee "$out/roofline-target-graphs-nojoin.md" || status=1
        ;;
    tensor-cores)
        echo "== test_backend_conformance with tensor cores" | tee "$out/tensor-cores.txt"
        SPECD_REQUIRE_CUDA=$([ "$device" = cuda ] && echo 1) SPECD_TEST_TENSOR_CORES=1 \
            "$B/test_backend_conformance" --jobs 1 2>&1 | tee -a "$out/tensor-cores.txt" | grep -E 'FAIL|Synthesis|!!!'
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        models_ready || { status=1; continue; }
        "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 16 --copy-mib 256 \
            --profile 16 --tensor-cores | tee "$out/roofline-target-tc.md" || status=1
        "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 8 --copy-mib 256 \
            --graphs --tensor-cores | tee "$out/roofline-target-graphs-tc.md" || status=1
        "$B/bench_roofline" --device "$device" --model "$draft" --pos 512 --gamma-max 8 --copy-mib 256 \
            --graphs --tensor-cores | tee "$out/roofline-draft-graphs-tc.md" || status=1
        "$B/bench_spec" --device "$device" --target "$target" --draft "$draft" --prompts "$stash/prompts-dev.jsonl" \
            --per-category 2 -n 64 --concurrency 8 --graphs --tensor-cores 2>"$out/identity-tc.log" |
            tee "$out/identity-tc.md" || status=1
        ;;
    prefill)
        models_ready || { status=1; continue; }
        for how in "" --tensor-cores --blas-prefill; do
            "$B/bench_roofline" --device "$device" --model "$target" --pos 2048 --batch 512 --gamma-max 1 \
                --copy-mib 256 $how | tee "$out/prefill-target${how:+-${how#--}}.md" || status=1
        done
        # the A/B of attention's blocks of 8 (query, head) pairs: a block a pair
        SPECD_CUDA_ATT_TILE=0 "$B/bench_roofline" --device "$device" --model "$target" --pos 2048 --batch 512 \
            --gamma-max 1 --copy-mib 256 --tensor-cores | tee "$out/prefill-target-tensor-cores-noatttile.md" || status=1
        "$B/bench_spec" --device "$device" --target "$target" --draft "$draft" --prompts "$stash/prompts-dev.jsonl" \
            --per-category 2 -n 64 --concurrency 8 --blas-prefill 2>"$out/identity-blas.log" |
            tee "$out/identity-blas.md" || status=1
        ;;
    context)
        models_ready || { status=1; continue; }
        "$B/bench_roofline" --device "$device" --model "$target" --pos 4000 --gamma-max 8 --copy-mib 256 \
            --profile 16 | tee "$out/roofline-target-pos4000.md" || status=1
        ;;
    identity)
        models_ready || { status=1; continue; }
        "$B/bench_spec" --device "$device" --target "$target" --draft "$draft" --prompts "$stash/prompts-dev.jsonl" \
            --per-category 4 -n 64 --concurrency 8 2>"$out/identity.log" | tee "$out/identity.md" || status=1
        ;;
    speedup)
        # the synthetic draft's greedy runs with their tokens kept on the GPU until a run ends, then
        # crossing every pass (the A/B of --draft-ids: the draft ms a drafted token, after the table)
        if models_ready; then
            for ids in backend host; do
                "$B/bench_spec" --device "$device" --target "$target" --draft "$draft" \
                    --prompts "$stash/prompts-dev.jsonl" --per-category 1 -n 32 --gammas 4 --draft-ids $ids \
                    2>"$out/draft-ids-$ids.log" | tee "$out/draft-ids-$ids.md" || status=1
            done
        else
            status=1
        fi
        smol=$stash/smollm2.gguf
        if [ ! -f "$smol" ] && [ -f "$stash/model/smollm2.sha256" ]; then
            cat "$stash"/model/smollm2.part* >"$smol.tmp" 2>/dev/null
            if [ "$(sha256sum <"$smol.tmp" | cut -d' ' -f1)" = "$(cat "$stash/model/smollm2.sha256")" ]; then
                mv "$smol.tmp" "$smol"
            else
                rm -f "$smol.tmp"
            fi
        fi
        if [ ! -f "$smol" ]; then
            echo "speedup: SmolLM2 incomplete ($(ls "$stash/model" | tr '\n' ' ')): carry the next part"
            continue
        fi
        "$B/bench_spec" --device "$device" --target "$smol" --prompts "$stash/prompts-dev.jsonl" \
            --per-category 3 -n 128 --gammas 2,4,8,0 2>"$out/speedup.log" | tee "$out/speedup.md" || status=1
        # adaptive γ again with steps replayed as graphs, both sides of the A/B
        "$B/bench_spec" --device "$device" --target "$smol" --prompts "$stash/prompts-dev.jsonl" \
            --per-category 3 -n 128 --gammas 0 --graphs 2>"$out/speedup-graphs.log" | tee "$out/speedup-graphs.md" ||
            status=1
        # and with the quantised matmuls on tensor cores too
        "$B/bench_spec" --device "$device" --target "$smol" --prompts "$stash/prompts-dev.jsonl" \
            --per-category 3 -n 128 --gammas 0 --graphs --tensor-cores 2>"$out/speedup-graphs-tc.log" |
            tee "$out/speedup-graphs-tc.md" || status=1
        ;;
    sampled)
        models_ready || { status=1; continue; }
        for where in backend host; do
            "$B/bench_spec" --device "$device" --target "$target" --draft "$draft" --prompts "$stash/prompts-dev.jsonl" \
                --per-category 1 -n 32 --gammas 4,0 --temperature 0.8 --sampling $where 2>"$out/sampled-$where.log" |
                tee "$out/sampled-$where.md" || status=1
        done
        ;;
    kernels)
        models_ready || { status=1; continue; }
        ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | tail -1)
        [ -n "$ncu" ] || echo "kernels: no ncu on this machine: the passes' wall times only"
        metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__registers_per_thread
        metrics=$metrics,sm__warps_active.avg.pct_of_peak_sustained_active
        # kernel_table NAME TITLE ARGS...: bench_roofline ARGS' wall time a pass, then each of its kernels
        kernel_table() {
            local name=$1 title=$2 wall
            shift 2
            "$B/bench_roofline" "$@" --trace 16 | tee "$out/$name.md" || return 1
            [ -n "$ncu" ] || return 0
            wall=$(sed -n 's/.*: \([0-9.]*\) ms a pass.*/\1/p' "$out/$name.md")
            if ! "$ncu" --profile-from-start off --graph-profiling node --clock-control none --cache-control none \
                --metrics "$metrics" -f -o "$out/$name" "$B/bench_roofline" "$@" --trace 2 >"$out/$name-ncu.log" 2>&1 ||
                ! "$ncu" --import "$out/$name.ncu-rep" --csv --page raw --print-units base >"$out/$name.csv"; then
                tail -5 "$out/$name-ncu.log"
                return 1
            fi
            echo | tee -a "$out/$name.md"
            python3 bench/gpu/ncu_table.py --passes 2 --wall-ms "$wall" --title "$title" "$out/$name.csv" |
                tee -a "$out/$name.md"
        }
        for how in "" --tensor-cores; do
            for n in 1 8; do
                name=kernels-target${how:+-tc}-$n
                what="${how:+tensor cores, }decode steps"
                [ "$n" -eq 1 ] || what="${how:+tensor cores, }verification passes of $n positions"
                args="--device $device --model $target --pos 512 --gamma-max 8 --seconds 0.2 $how --trace-positions $n"
                # should ncu refuse the graphs' kernels, the same passes op by op still profile each kernel
                kernel_table "$name" "kernel (ncu; $what)" $args --graphs || {
                    status=1
                    echo "kernels: $name failed with graphs: the same op by op"
                    kernel_table "$name-ops" "kernel (ncu; $what, op by op)" $args || status=1
                }
            done
        done
        for n in 1 8; do
            SPECD_CUDA_WIDE=0 "$B/bench_roofline" --device "$device" --model "$target" --pos 512 --gamma-max 8 \
                --seconds 0.2 --graphs --trace-positions $n --trace 16 | tee "$out/kernels-target-nowide-$n.md" ||
                status=1
        done
        ;;
    *) echo "measure: unknown step $step" >&2; status=2 ;;
    esac
done
models_ready >/dev/null || true
exit $status
