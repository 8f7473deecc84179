#!/usr/bin/env bash
# The GPU measurements, in stages that each fit one call on the lent H200 machine (10 minutes a call).
# Run from the repository root on the device with the cp312 wheels carried in .whl/ and the trained
# tiny pair + drafters carried in .carry/engine/ (see validation/README.md); results go under $OUT.
#
#   bash benchmarks/device_session.sh engine      # Llama-shaped decode speed, ours (fused/unfused) vs HF
#   bash benchmarks/device_session.sh validate    # predict-then-measure on the GPU (tiny pair, bf16)
#   bash benchmarks/device_session.sh quick       # the same, quick grid (about 2 minutes), packed in one archive
#   bash benchmarks/device_session.sh drafters    # eager-pass profile + the drafter table on the GPU
#   bash benchmarks/device_session.sh pair        # train the gpu pair, then tau / speed-up vs ours and HF
#   bash benchmarks/device_session.sh tp          # on nvidia-h200-x2: TP=2 checks, all-reduce fit, TP table
#   bash benchmarks/device_session.sh four        # on nvidia-h200-x4: engine, validate, drafters, pair at once
#   bash benchmarks/device_session.sh one         # on nvidia-h200: validate + drafter table in one call
#   bash benchmarks/device_session.sh tp4         # on nvidia-h200-x4: TP 1/2/4 tables, 8B and 70B shapes
#                                                 #   (TP_DRAFT=--replicate-draft: the draft unsharded on every GPU)
#   bash benchmarks/device_session.sh two         # on nvidia-h200-x2: validate and the drafters stage side by side
#   bash benchmarks/device_session.sh solo        # on nvidia-h200-x2: validate alone, then the 8B TP run with its profile kept
#   bash benchmarks/device_session.sh noise       # validate's measurement sequence re-run with diagnostics
#   bash benchmarks/device_session.sh steps       # graphed speculative steps: GPU tests, eager vs graphed, quick validate
#   bash benchmarks/device_session.sh checked     # the step-graph GPU tests, then (if they pass) validate, one archive
#   bash benchmarks/device_session.sh tp2         # on nvidia-h200-x2: TP 1/2 8B, TP 2 70B, the draft replicated
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > "$OUT/gpu.csv" || true

case "${1:-}" in
  engine)
    # one shape at a time under its own deadline (each compile with tuning takes about a minute; the
    # benchmark saves after every measurement, so a cut run keeps its headline rows)
    timeout 370 python3 benchmarks/engine_gpu.py --shapes llama-3.1-8b --out "$OUT/engine_8b.json" > "$OUT/engine_8b.log" 2>&1 || true
    timeout 200 python3 benchmarks/engine_gpu.py --shapes llama-3.2-1b --out "$OUT/engine_1b.json" > "$OUT/engine_1b.log" 2>&1 || true ;;
  validate)
    # profile + measure + predict on one machine: about 220 s of profiling alone on an H200 (session 4)
    # packed into one archive: the report folder alone is more files than a call brings back
    # (with a log of the GPU's SM clock and load beside it)
    R="$OUT/r"; mkdir -p "$R"; export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw,pstate --format=csv -lms 500 \
      > "$R/clocks.csv" 2>&1 &
    SMI=$!
    # (the call's limit is 600 s; a run cut while predicting is finished by `validate --repredict`)
    timeout 588 python3 -m dspark_sim.cli.main validate --device cuda --preset tiny --cache-dir .carry/engine \
      -o "$R/validation-cuda" > "$R/validate.log" 2>&1 || true
    kill $SMI || true
    tar czf "$OUT/validate.tgz" -C "$OUT" r && rm -rf "$R" ;;
  quick)
    # packed like `validate`: a report folder is more files than a call brings back (session 12 lost one)
    R="$OUT/r"; mkdir -p "$R"; export PYTHONUNBUFFERED=1
    timeout 280 python3 -m dspark_sim.cli.main validate --device cuda --quick --preset tiny --cache-dir .carry/engine \
      -o "$R/validation-cuda-quick" > "$R/validate.log" 2>&1 || true
    tar czf "$OUT/quick.tgz" -C "$OUT" r && rm -rf "$R" ;;
  noise)
    # where the GPU outliers come from: the batch >= 4 cases' step walls, rounds with and without a matmul
    # burst before each case, beside a log of the GPU's SM clock (benchmarks/gpu_case_noise.py)
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw,pstate --format=csv -lms 200 \
      > "$OUT/clocks.csv" 2>&1 &
    SMI=$!
    timeout 330 python3 benchmarks/gpu_case_noise.py --device cuda --cache-dir .carry/engine --min-batch 4 \
      --sps-from validation/reports/cuda/report.json --rounds cold,burst,cold \
      -o "$OUT/noise.json" > "$OUT/noise.log" 2>&1 || true
    kill $SMI || true
    tar czf "$OUT/noise.tgz" -C "$OUT" noise.json clocks.csv && rm -f "$OUT/noise.json" "$OUT/clocks.csv" ;;
  steps)
    # the step graphs (cudagraphs.StepGraphs) on a GPU: their tests (pytest from the carried wheels), the
    # step time against the eager-phase loop, and validate --quick with the trained pair, in one archive
    R="$OUT/r"; mkdir -p "$R"; export PYTHONUNBUFFERED=1
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/engine/test_step_graphs.py > "$R/pytest.log" 2>&1 || true
    timeout 180 python3 benchmarks/step_graphs_gpu.py --cache-dir .carry/engine --out "$R/step_graphs.json" \
      > "$R/step_graphs.log" 2>&1 || true
    timeout 150 python3 -m dspark_sim.cli.main validate --device cuda --quick --preset tiny --cache-dir .carry/engine \
      -o "$R/validation-cuda-quick" > "$R/validate-quick.log" 2>&1 || true
    tar czf "$OUT/steps.tgz" -C "$OUT" r && rm -rf "$R" ;;
  checked)
    # validate as in `validate`, behind the step graphs' GPU tests (a failing test stops the call there)
    R="$OUT/r"; mkdir -p "$R"; export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw,pstate --format=csv -lms 500 \
      > "$R/clocks.csv" 2>&1 &
    SMI=$!
    if timeout 90 python3 -m pytest -q -p no:cacheprovider tests/engine/test_step_graphs.py > "$R/pytest.log" 2>&1; then
      timeout 520 python3 -m dspark_sim.cli.main validate --device cuda --preset tiny --cache-dir .carry/engine \
        -o "$R/validation-cuda" > "$R/validate.log" 2>&1 || true
    fi
    kill $SMI || true
    tar czf "$OUT/validate.tgz" -C "$OUT" r && rm -rf "$R" ;;
  drafters)
    # the eager-pass profile `validate --drafters` pairs with the table (the table's loops are eager),
    # then the table, in one call so both see the same host (session 4: 1.5x host drift within a call)
    R="$OUT/r"; mkdir -p "$R"; export PYTHONUNBUFFERED=1
    # (session 4 ran batches 1,4,16 with frontier 1-16 in 173 s; session 3's 1-64 took 215 s at one repeat)
    timeout 150 python3 -m dspark_sim.cli.main profile --device cuda --preset tiny --cache-dir .carry/engine --dtype fp32 \
      --no-cuda-graphs --batch-sizes 1,4,16,64 --repeats 2 -o "$R/profile-eager.json" > "$R/profile-eager.log" 2>&1 || true
    timeout 400 python3 benchmarks/drafters_cpu.py --device cuda --cache-dir .carry/engine --new-tokens 96 \
      --repeats 1 --batches 1,4,16,64 --frontier-batches 1,2,4,8,16,32,64 --out "$R/drafters_cuda.json" \
      --markdown "$R/drafters_cuda.md" > "$R/drafters.log" 2>&1 || true
    tar czf "$OUT/drafters.tgz" -C "$OUT" r && rm -rf "$R" ;;
  pair)
    # not .carry/: carried paths are replaced on every call, while /tmp survives between calls on a warm
    # machine, so a second call can finish what a first one (training: about 7 minutes) started
    python3 benchmarks/engine_gpu_pair.py --cache-dir /tmp/dspark-engine --out "$OUT/engine_gpu_pair.json"
    cp -r /tmp/dspark-engine "$OUT/gpu-pair" ;;
  tp)
    torchrun --standalone --nproc-per-node 2 -m dspark_sim.cli.tp generate --device cuda --dtype fp64 --check \
      --json -o "$OUT/tp_check_fp64.json"
    python3 -m dspark_sim.cli.tp allreduce --device cuda --tp 2 --shape llama-3.1-8b --dtype bf16 \
      --hardware h200-sxm --hardware-out "$OUT/h200-sxm-tp2.yaml" -o "$OUT/allreduce_tp2.json"
    python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-8b --draft-shape llama-3.2-1b --dtype bf16 \
      --tp 1,2 --batch 1,8 --prompt-len 128 --new-tokens 128 --gamma 4 -o "$OUT/tp_engine_h200x2.json" ;;
  four)
    # on nvidia-h200-x4: the single-GPU stages side by side, one GPU each, each under a deadline that
    # leaves time to pack what they wrote into one archive (a call brings back at most 8 files)
    R="$OUT/r"; mkdir -p "$R"; export OMP_NUM_THREADS=8 PYTHONUNBUFFERED=1
    (CUDA_VISIBLE_DEVICES=0 timeout 530 python3 benchmarks/engine_gpu.py --shapes llama-3.1-8b \
       --out "$R/engine_8b.json" > "$R/engine_8b.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=1 timeout 230 python3 benchmarks/engine_gpu.py --shapes llama-3.2-1b \
       --out "$R/engine_1b.json" > "$R/engine_1b.log" 2>&1
     CUDA_VISIBLE_DEVICES=1 timeout 300 python3 benchmarks/drafters_cpu.py --device cuda --cache-dir .carry/engine \
       --new-tokens 96 --repeats 2 --out "$R/drafters_cuda.json" --markdown "$R/drafters_cuda.md" \
       > "$R/drafters.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=2 timeout 530 python3 -m dspark_sim.cli.main validate --device cuda --preset tiny \
       --cache-dir .carry/engine -o "$R/validation-cuda" > "$R/validate.log" 2>&1) &
    (CUDA_VISIBLE_DEVICES=3 timeout 530 python3 benchmarks/engine_gpu_pair.py --cache-dir /tmp/dspark-engine \
       --out "$R/engine_gpu_pair.json" > "$R/pair.log" 2>&1) &
    wait || true
    tar czf "$OUT/four.tgz" -C "$OUT" r && rm -rf "$R" ;;
  one)
    # on nvidia-h200: validate, then the drafter table (one timed run per row), packed into one archive
    R="$OUT/r"; mkdir -p "$R"; export PYTHONUNBUFFERED=1
    timeout 200 python3 -m dspark_sim.cli.main validate --device cuda --preset tiny --cache-dir .carry/engine \
      -o "$R/validation-cuda" > "$R/validate.log" 2>&1 || true
    timeout 340 python3 benchmarks/drafters_cpu.py --device cuda --cache-dir .carry/engine --new-tokens 96 \
      --repeats 1 --out "$R/drafters_cuda.json" --markdown "$R/drafters_cuda.md" > "$R/drafters.log" 2>&1 || true
    tar czf "$OUT/one.tgz" -C "$OUT" r && rm -rf "$R" ;;
  tp4)
    # on nvidia-h200-x4: TP 1, 2, 4 for the 8B shape (calibrated on its TP-1 run), then the 70B shape at
    # TP 2 and 4 (140 GB of bf16 weights: no room for a KV cache on one GPU) predicted with that hardware
    export PYTHONUNBUFFERED=1
    timeout 330 python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-8b --draft-shape llama-3.2-1b \
      --dtype bf16 --tp 1,2,4 --batch 1,8 --prompt-len 128 --new-tokens 128 --gamma 4 ${TP_DRAFT:-} \
      --hardware-out "$OUT/h200-tp-calibrated.yaml" -o "$OUT/tp_engine_8b.json" 2> "$OUT/tp_8b.log" > /dev/null || true
    timeout 230 python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-70b --draft-shape llama-3.2-1b \
      --dtype bf16 --tp 2,4 --batch 1,8 --prompt-len 128 --new-tokens 96 --gamma 4 --repeats 2 --no-calibrate ${TP_DRAFT:-} \
      --hardware "$OUT/h200-tp-calibrated.yaml" -o "$OUT/tp_engine_70b.json" 2> "$OUT/tp_70b.log" > /dev/null || true
    ;;
  two)
    # on nvidia-h200-x2: validate on one GPU, the drafters stage (eager profile + table, batch 1-64) on the
    # other, side by side, packed into one archive
    R="$OUT/r"; mkdir -p "$R/validate" "$R/drafters"; export PYTHONUNBUFFERED=1
    (CUDA_VISIBLE_DEVICES=0 timeout 575 python3 -m dspark_sim.cli.main validate --device cuda --preset tiny \
       --cache-dir .carry/engine -o "$R/validate/validation-cuda" > "$R/validate/validate.log" 2>&1) &
    (export CUDA_VISIBLE_DEVICES=1
     timeout 150 python3 -m dspark_sim.cli.main profile --device cuda --preset tiny --cache-dir .carry/engine --dtype fp32 \
       --no-cuda-graphs --batch-sizes 1,4,16,64 --repeats 2 -o "$R/drafters/profile-eager.json" \
       > "$R/drafters/profile-eager.log" 2>&1
     timeout 380 python3 benchmarks/drafters_cpu.py --device cuda --cache-dir .carry/engine --new-tokens 96 \
       --repeats 1 --batches 1,4,16,64 --frontier-batches 1,2,4,8,16,32,64 --out "$R/drafters/drafters_cuda.json" \
       --markdown "$R/drafters/drafters_cuda.md" > "$R/drafters/drafters.log" 2>&1) &
    wait || true
    tar czf "$OUT/two.tgz" -C "$OUT" r && rm -rf "$R" ;;
  solo)
    # on nvidia-h200-x2: validate alone on one GPU (nothing beside it on the host), then the 8B TP 1/2 run
    # again, its TP-1 profile kept in the report (to re-calibrate a changed cost model without a GPU)
    R="$OUT/r"; mkdir -p "$R"; export PYTHONUNBUFFERED=1
    CUDA_VISIBLE_DEVICES=0 timeout 300 python3 -m dspark_sim.cli.main validate --device cuda --preset tiny \
      --cache-dir .carry/engine -o "$R/validation-cuda" > "$R/validate.log" 2>&1 || true
    tar czf "$OUT/solo.tgz" -C "$OUT" r && rm -rf "$R"
    timeout 200 python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-8b --draft-shape llama-3.2-1b \
      --dtype bf16 --tp 1,2 --batch 1,8 --prompt-len 128 --new-tokens 128 --gamma 4 --replicate-draft \
      -o "$OUT/tp2_8b_profiled.json" 2> "$OUT/tp2_8b_profiled.log" > /dev/null || true ;;
  tp2)
    # on nvidia-h200-x2: the 8B shape at TP 1 and 2 with the draft replicated (calibrated on its TP-1 run,
    # whose profile the report keeps), then the 70B at TP 2 predicted with that calibration
    export PYTHONUNBUFFERED=1
    timeout 200 python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-8b --draft-shape llama-3.2-1b \
      --dtype bf16 --tp 1,2 --batch 1,8 --prompt-len 128 --new-tokens 128 --gamma 4 --replicate-draft \
      --hardware-out "$OUT/h200-tp2-calibrated.yaml" -o "$OUT/tp2_8b.json" 2> "$OUT/tp2_8b.log" > /dev/null || true
    timeout 150 python3 benchmarks/tp_engine.py --device cuda --shape llama-3.1-70b --draft-shape llama-3.2-1b \
      --dtype bf16 --tp 2 --batch 1,8 --prompt-len 128 --new-tokens 96 --gamma 4 --repeats 2 --no-calibrate \
      --replicate-draft --hardware "$OUT/h200-tp2-calibrated.yaml" -o "$OUT/tp2_70b.json" \
      2> "$OUT/tp2_70b.log" > /dev/null || true
    ;;
  *)
    echo "usage: OUT=... bash benchmarks/device_session.sh engine|validate|noise|steps|checked|drafters|pair|tp|four|one|tp4|tp2|two|solo" >&2; exit 2 ;;
esac
