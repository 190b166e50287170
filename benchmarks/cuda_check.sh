#!/usr/bin/env bash
# The CUDA checks of one GPU session, in one command (see README "Performance"):
#   bash benchmarks/cuda_check.sh OUTDIR
# 1. the CUDA test module (Triton kernels vs the torch loops, golden vectors, snnTorch oracle,
#    a resumed run), 2. the LFP step benchmark at T = 15 / 25 / 100, 3. the digits quick start
#    on CUDA. Every log and the benchmark's JSON go to OUTDIR. Needs the golden vectors at
#    ../shared/spec/vectors (as beside a checkout) and snntorch for the oracle and the benchmark.
set -u -o pipefail
out=${1:-cuda-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
n=$(( $(nproc) > 8 ? 8 : 2 ))
timeout 240 python3 -m pytest -q -p no:cacheprovider -n "$n" tests/test_core_fused_cuda.py 2>&1 | tee "$out/tests.txt" | tail -25
timeout 200 python3 benchmarks/lfp_step.py --device cuda --steps 15 25 100 --repeats 50 --no-rss --json "$out/lfp_step_cuda.json" 2>&1 | tee "$out/lfp_step.txt" | tail -30
timeout 90 python3 -m spikelfp.cli train --beta 0.9 --steps 25 --device cuda --epochs 3 --progress off --out "$out/runs" 2>&1 | tee "$out/quickstart.txt" | tail -8
rm -rf "$out/runs"
