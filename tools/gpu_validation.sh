#!/usr/bin/env bash
# The GPU measurements behind docs/validation.md, one stage per call on a lent GPU machine (a call may run
# 10 minutes and bring back a few files, so a stage packs its results into one archive under $OUT).
# Run from the repository root on the device, with the Python wheels the device lacks carried in .whl/
# and the trained tiny pair (and its drafters) carried in .carry/engine/ (docs/validation.md, "Running the
# GPU measurements", says how to make both).
#
#   OUT=... bash tools/gpu_validation.sh engine-speed          # 1 GPU: Llama-3.1-8B / 3.2-1B decode speed, ours vs HF
#   OUT=... bash tools/gpu_validation.sh step-graphs           # 1 GPU: step-graph GPU tests, graphed vs eager steps
#   OUT=... bash tools/gpu_validation.sh gpu-pair              # 1 GPU: train the `gpu` pair, tau and speed-up vs HF
#   OUT=... bash tools/gpu_validation.sh predict-then-measure  # 1 GPU: `dspark-sim validate --device cuda`
#                                                              #   (QUICK=1: the quick grid, about 2 minutes)
#   OUT=... bash tools/gpu_validation.sh drafters              # 1 GPU: eager-pass profile + the drafter table
#   OUT=... bash tools/gpu_validation.sh tensor-parallel       # 4 GPUs: TP 1/2/4 (8B shape), TP 2/4 (70B shape),
#                                                              #   the draft replicated on every GPU
#   OUT=... bash tools/gpu_validation.sh tensor-parallel-check # 2 GPUs: TP 2 output against one process (fp64),
#                                                              #   the all-reduce fit written into a hardware profile
set -euo pipefail
STAGES="engine-speed step-graphs gpu-pair predict-then-measure drafters tensor-parallel tensor-parallel-check"
if [[ " $STAGES " != *" ${1:-none} "* ]]; then
  echo "usage: OUT=... bash tools/gpu_validation.sh STAGE, STAGE one of: $STAGES" >&2
  exit 2
fi
: "${OUT:?set OUT to the folder that comes back}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# NVLink multicast (NVLS) off for NCCL, PyTorch's symmetric memory and NVSHMEM, as every committed multi-GPU
# figure was measured
export PYTHONPATH="/tmp/site:$PWD" NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
R="$OUT/r"
mkdir -p "$R"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > "$R/gpu.csv" || true
CLI=(python3 -m dspark_sim.cli.main)

case "$1" in
  engine-speed)
    # batch 1, greedy, 128-token prompt, 256 new tokens, random bf16 weights; one shape at a time under its own
    # deadline (compiling with the kernel tuning takes one to two minutes; the benchmark saves after every
    # measurement, so a run cut short keeps its headline rows)
    timeout 370 python3 benchmarks/engine_gpu.py --shapes llama-3.1-8b --headline-only \
      --out "$R/h200_engine_8b.json" > "$R/engine_8b.log" 2>&1 || true
    timeout 200 python3 benchmarks/engine_gpu.py --shapes llama-3.2-1b --headline-only \
      --out "$R/h200_engine_1b.json" > "$R/engine_1b.log" 2>&1 || true ;;
  step-graphs)
    # the step graphs' GPU tests (pytest from the carried wheels), then each speculative step replayed as CUDA
    # graphs against the loop of eager phases, on the trained tiny pair
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/engine/test_step_graphs.py > "$R/pytest.log" 2>&1 || true
    timeout 300 python3 benchmarks/step_graphs_gpu.py --cache-dir .carry/engine --out "$R/h200_step_graphs.json" \
      > "$R/step_graphs.log" 2>&1 || true ;;
  gpu-pair)
    # trains in about 5 minutes into /tmp (it survives between calls on a warm machine, carried paths do not),
    # then tau and speed-up against the plain loop and against HF transformers on the same weights
    timeout 570 python3 benchmarks/engine_gpu_pair.py --cache-dir /tmp/dspark-engine --out "$R/h200_gpu_pair.json" \
      > "$R/gpu_pair.log" 2>&1 || true ;;
  predict-then-measure)
    # profile, acceptance traces, measurement and prediction in one call, with the GPU's SM clock logged beside
    # it; a run cut short while predicting is finished anywhere by `dspark-sim validate --repredict`
    nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw,pstate --format=csv -lms 500 \
      > "$R/clocks.csv" 2>&1 &
    SMI=$!
    if [ "${QUICK:-0}" = 1 ]; then
      timeout 280 "${CLI[@]}" validate --device cuda --quick --preset tiny --cache-dir .carry/engine \
        -o "$R/validation-cuda-quick" > "$R/validate.log" 2>&1 || true
    else
      timeout 575 "${CLI[@]}" validate --device cuda --preset tiny --cache-dir .carry/engine \
        -o "$R/validation-cuda" > "$R/validate.log" 2>&1 || true
    fi
    kill "$SMI" || true ;;
  drafters)
    # the eager-pass profile `validate --drafters` pairs with the table (the drafter loops run eagerly), then
    # the table, in one call so that both see the same host
    timeout 150 "${CLI[@]}" profile --device cuda --preset tiny --cache-dir .carry/engine --dtype fp32 \
      --no-cuda-graphs --batch-sizes 1,4,16,64 --repeats 2 -o "$R/cuda-profile-eager.json" \
      > "$R/profile-eager.log" 2>&1 || true
    timeout 400 "${CLI[@]}" engine drafters table --device cuda --cache-dir .carry/engine --new-tokens 96 \
      --repeats 1 --batches 1,4,16,64 --frontier-batches 1,2,4,8,16,32,64 --out "$R/cuda.json" \
      --markdown "$R/cuda.md" > "$R/drafters.log" 2>&1 || true ;;
  tensor-parallel)
    # on 4 GPUs: the 8B shape at TP 1, 2 and 4 (the cost model calibrated on its TP-1 run, the all-reduces fitted
    # between row-parallel matmuls), then the 70B shape at TP 2 and 4 (141 GB of bf16 weights leave no room for
    # a KV cache on one GPU) predicted with that calibration; the 1B draft replicated on every GPU
    timeout 330 python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-8b --draft-shape llama-3.2-1b \
      --dtype bf16 --tp 1,2,4 --batch 1,8 --prompt-len 128 --new-tokens 128 --gamma 4 --replicate-draft \
      --hardware-out "$R/h200x4_replicated_draft_calibrated.yaml" -o "$R/h200x4_replicated_draft_8b.json" \
      2> "$R/tp_8b.log" > /dev/null || true
    timeout 230 python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-70b --draft-shape llama-3.2-1b \
      --dtype bf16 --tp 2,4 --batch 1,8 --prompt-len 128 --new-tokens 96 --gamma 4 --repeats 2 --no-calibrate \
      --replicate-draft --hardware "$R/h200x4_replicated_draft_calibrated.yaml" \
      -o "$R/h200x4_replicated_draft_70b.json" 2> "$R/tp_70b.log" > /dev/null || true ;;
  tensor-parallel-check)
    # on 2 GPUs: greedy TP-2 generation in fp64 checked token for token against the single-process engine on the
    # full weights, then the engine's all-reduces (its message sizes, timed after the matmul each one reduces)
    # fitted as a cost per collective, per ring hop and per byte, written into the H200 profile
    timeout 200 torchrun --standalone --nproc-per-node 2 -m dspark_sim.cli.tp generate --device cuda --dtype fp64 \
      --check --json -o "$R/tp_check_fp64.json" > "$R/tp_check.log" 2>&1 || true
    timeout 300 "${CLI[@]}" profile --device cuda --allreduce-ranks 2 --between-matmuls --shape llama-3.1-8b \
      --dtype bf16 --hardware h200-sxm --hardware-out "$R/h200-sxm-tp2.yaml" -o "$R/allreduce_tp2.json" \
      > "$R/allreduce.log" 2>&1 || true ;;
esac
tar czf "$OUT/$1.tgz" -C "$OUT" r && rm -rf "$R"
