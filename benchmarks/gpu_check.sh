#!/usr/bin/env bash
# The one prepared check for a lent GPU (one H200, torch 2.11, Triton 3.6, no network).
# Run from the source tree root:
#
#     OUT=/path/to/results bash benchmarks/gpu_check.sh
#
# Stages, each under `timeout`, each exit status reported; a failing stage does not
# stop the next one:
#   1. env   : nvidia-smi, versions, arch and tile family,           -> $OUT/env.log
#              sisa.available_backends("cuda")
#   2. tests : GPU parity tests, python -m pytest tests -q              -> $OUT/tests.log
#              (the tests pick CUDA by themselves, bf16 included)
#   3. static: static-vs-measured: every kernel config compiled by the   -> $OUT/static/, $OUT/static.log
#              real driver, its registers/spills after loading beside ptxas's,
#              python -m benchmarks.static --device --quick --dtypes bf16 (compare
#              with the committed benchmarks/results/static/sm90_bf16.json)
#   4. decode: decode-step latency over cache lengths 1..32K            -> $OUT/decode/, $OUT/decode.log
#   5. varlen: packed cu_seqlens call vs a per-sequence loop (bf16,     -> $OUT/varlen/, $OUT/varlen.log
#              32K tokens of 1..1024-token sequences), python -m benchmarks.varlen
#   6. gqa   : sdpa vs triton at 32 query / 8 kv heads (t=4096, d=128,  -> $OUT/gqa/, $OUT/gqa.log
#              n=16, bf16, fwd and fwd+bwd), python -m benchmarks.run --kv-heads 8
#   7. ratio : triton vs flash attention in alternating pairs (bf16,    -> $OUT/ratio/, $OUT/ratio.log
#              t=8192, 16 heads, d=128, n=16), python -m benchmarks.ratio
#   8. model : whole-model training/prefill/decode throughput of SISA, -> $OUT/model/, $OUT/model.log
#              the Transformer (flash-attn when importable) and the paper's form at
#              152M, bf16 autocast, train 8x2048, decode at an 8K cache (batch 1 and
#              16), python -m benchmarks.model (its float64 gate first; --budget-s)
#   9. bench : the default GPU sweep, python -m benchmarks.run          -> $OUT/bench/, $OUT/bench.log
#              with --budget-s so it stops timing in time to write its report;
#              results.json is rewritten after every row, so even a kill keeps data.
# All nine fit in TOTAL_S seconds (default 560, under the device tool's 600 s per call).
set -u

OUT=${OUT:-benchmarks/results/scratch/gpu-check}
TOTAL_S=${TOTAL_S:-560}
TESTS_S=${TESTS_S:-150}
BENCH_ARGS=${BENCH_ARGS:-}           # e.g. "--d-state 16 --dtype bf16" to narrow the sweep
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
START=$SECONDS
SUMMARY=()

stage() {  # stage NAME LIMIT_S TAIL_LINES CMD...
    local name=$1 limit=$2 lines=$3
    shift 3
    local t0=$SECONDS
    echo "=== $name: start at +$((t0 - START)) s, limit ${limit} s ==="
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note=" (timed out)"; fi
    tail -n "$lines" "$OUT/$name.log"
    SUMMARY+=("$name: exit $rc$note after $((SECONDS - t0)) s")
    echo "=== $name: exit $rc$note after $((SECONDS - t0)) s ==="
}

stage env 60 80 bash -c '
nvidia-smi
python - <<EOF
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as exc:
    print("triton unavailable:", exc)
try:
    import flash_attn; print("flash_attn", flash_attn.__version__)
except Exception as exc:
    print("flash_attn unavailable:", type(exc).__name__)
print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
try:
    from sisa_kernels.configs import device as tiles
    info = tiles.info_of(torch.device("cuda", 0))
    print("arch", "sm_%d%d" % info.capability, "| opt-in shared memory per block", info.smem_per_block,
          "B | tile family", tiles.family_of(torch.device("cuda", 0)))
except Exception as exc:
    print("tile family unavailable:", type(exc).__name__, exc)
import sisa
from sisa.backends import triton_unavailable_reason
print("sisa.available_backends(cuda):", sisa.available_backends("cuda"),
      "| triton reason:", triton_unavailable_reason("cuda"))
EOF'

stage tests "$TESTS_S" 40 python -m pytest tests -q -p no:cacheprovider

# bf16 only: the three dtypes' quick plans (~240 compiles, float32's IEEE tiles the slowest)
# do not fit 60 s on 8 workers; the committed per-arch reports cover fp16 and fp32.
stage static 60 25 python -m benchmarks.static --device --quick --dtypes bf16 --jobs 8 --out "$OUT/static"

stage decode 40 12 python -m benchmarks.decode --out "$OUT/decode"

stage varlen 40 12 python -m benchmarks.varlen --out "$OUT/varlen"

stage gqa 40 16 python -m benchmarks.run --seqlens 4096 --d-head 128 --d-state 16 --dtype bf16 --heads 32 \
    --kv-heads 8 --providers plain,sdpa,triton --budget-s 30 --no-plot --out "$OUT/gqa"

stage ratio 40 20 python -m benchmarks.ratio --provider triton --dtype bf16 --seqlen 8192 --batch 2 \
    --heads 16 --d-head 128 --d-state 16 --rounds 2 --pairs 20 --out "$OUT/ratio"

stage model 80 40 python -m benchmarks.model --preset 152M --amp bf16 --prefill 2048,8192 --cache-lens 8192 \
    --decode-batches 1,16 --rounds 3 --budget-s 50 --no-plot --out "$OUT/model"

LEFT=$((TOTAL_S - (SECONDS - START) - 10))
BUDGET=$((LEFT - 75))                 # stop timing early enough to write results.md/png
if [ "$BUDGET" -lt 30 ]; then BUDGET=30; fi
# shellcheck disable=SC2086
stage bench "$LEFT" 25 python -m benchmarks.run --out "$OUT/bench" --budget-s "$BUDGET" $BENCH_ARGS

echo "=== summary (total $((SECONDS - START)) s) ==="
printf '%s\n' "${SUMMARY[@]}"
if [ -f "$OUT/bench/results.json" ]; then
    python - "$OUT/bench/results.json" <<'EOF'
import collections, json, sys
rows = json.load(open(sys.argv[1]))["results"]
print("bench rows by status:", dict(collections.Counter(r["status"] for r in rows)))
bad = [r for r in rows if r["status"] in ("mismatch", "error")]
for r in bad[:40]:
    print(f"  {r['status']}: {r['provider']} {r['mode']} t={r['seqlen']} d={r['d_head']} "
          f"n={r['d_state']} {r['dtype']}: {r['reason']}")
if len(bad) > 40:
    print(f"  ... and {len(bad) - 40} more (see results.md)")
EOF
fi
