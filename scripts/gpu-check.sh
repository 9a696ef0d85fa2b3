#!/usr/bin/env bash
# One-call check of flashmla-node on a GPU machine: doctor, the `full` compare of the
# CUDA backend against the reference, CUDA against the float64 oracle on the small `quick` cases,
# sparse prefill (the `prefill-full` grid's cases up to 2 GFLOP, CUDA against the reference),
# FlashMLA's decode benchmark shapes and its prefill performance cases on CUDA; a short table last. Needs no network and builds nothing
# but (if missing, and cmake and a C++ compiler exist) the native addon, offline.
#
#   FLASHMLA_LIBRARY=/path/to/flash_mla_build.so scripts/gpu-check.sh
#
# Environment:
#   FLASHMLA_LIBRARY  the FlashMLA build to load (kernels-only .so or the Python extension module)
#   NODE              a node binary to use when `node` is not on PATH (Node >= 20); without either,
#                     a node-v*-linux-x64.tar.xz in the repository root, scripts/ or the parent
#                     directory is unpacked into .gpu-check/ and used
#   GPU_CHECK_OUT     where logs and JSON go (default: .gpu-check/ in the repository)
#   DEVICE            CUDA device index (default 0)
# Exit status: 0 all steps passed; 1 a step failed or timed out; 2 something needed is missing.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${GPU_CHECK_OUT:-$ROOT/.gpu-check}
DEVICE=${DEVICE:-0}
mkdir -p "$OUT"
missing=()

# --- Node ----------------------------------------------------------------------------------------
node_bin=""
if [ -n "${NODE:-}" ]; then
  if [ -x "$NODE" ]; then node_bin=$NODE; else missing+=("node: NODE=$NODE is not an executable file"); fi
elif command -v node >/dev/null 2>&1; then
  node_bin=$(command -v node)
else
  tarball=$(ls "$ROOT"/node-v*-linux-x64.tar.xz "$ROOT"/scripts/node-v*-linux-x64.tar.xz "$ROOT"/../node-v*-linux-x64.tar.xz 2>/dev/null | head -n 1)
  if [ -n "$tarball" ]; then
    mkdir -p "$OUT/node" && tar -xJf "$tarball" -C "$OUT/node" --strip-components=1 && node_bin="$OUT/node/bin/node"
  fi
  [ -n "$node_bin" ] || missing+=("node: not on PATH; set NODE=/path/to/node or put a node-v*-linux-x64.tar.xz (Node >= 20) in $ROOT")
fi
if [ -n "$node_bin" ]; then
  major=$("$node_bin" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt 20 ]; then missing+=("node: $node_bin is not Node >= 20"); node_bin=""; fi
fi

# --- GPU -----------------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  missing+=("GPU: nvidia-smi not found (no NVIDIA driver on this machine)")
elif ! gpus=$(nvidia-smi --query-gpu=index,name,compute_cap --format=csv,noheader 2>&1) || [ -z "$gpus" ]; then
  missing+=("GPU: nvidia-smi lists no GPU (${gpus:-no output})")
else
  echo "GPUs: $gpus" | tr '\n' ';' && echo
  cap=$(echo "$gpus" | awk -F', ' -v d="$DEVICE" '$1 == d { print $3 }')
  case "$cap" in
    9.0|10.*) ;;
    "") missing+=("GPU: device $DEVICE not listed by nvidia-smi") ;;
    *) missing+=("GPU: device $DEVICE has compute capability $cap; FlashMLA's decode kernels need 9.0 (Hopper) or 10.x (Blackwell)") ;;
  esac
fi

# --- FlashMLA build ------------------------------------------------------------------------------
if [ -z "${FLASHMLA_LIBRARY:-}" ]; then
  missing+=("FlashMLA build: FLASHMLA_LIBRARY is not set (path of a FlashMLA build's .so)")
elif [ ! -f "$FLASHMLA_LIBRARY" ]; then
  missing+=("FlashMLA build: FLASHMLA_LIBRARY=$FLASHMLA_LIBRARY does not exist")
fi

# --- The package: compiled JS and the native addon --------------------------------------------------
if [ ! -f "$ROOT/dist/cli/main.js" ]; then
  missing+=("package: $ROOT/dist/cli/main.js missing; run 'npm run build' (or 'npm ci') where the network is available")
fi
addon() { ls "$ROOT"/build/Release/*.node 2>/dev/null | head -n 1; }
if [ -z "$(addon)" ] && [ -n "$node_bin" ] && command -v cmake >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 \
   && [ -d "$ROOT/node_modules/cmake-js" ]; then
  echo "native addon missing: building it offline with cmake-js (log: $OUT/addon-build.log)"
  (cd "$ROOT" && timeout 240 "$node_bin" scripts/install-native.mjs) >"$OUT/addon-build.log" 2>&1
fi
if [ -z "$(addon)" ]; then
  why=""
  [ -f "$ROOT/build/native-build-error.txt" ] && why=" ($(head -n 1 "$ROOT/build/native-build-error.txt"))"
  missing+=("native addon: no $ROOT/build/Release/*.node$why; run 'npm rebuild flashmla-node' (needs cmake and a C++ compiler)")
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu-check: cannot run; missing:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 2
fi

# --- Steps -----------------------------------------------------------------------------------------
# Budgets (seconds) keep the whole run under 10 minutes on an H200 host.
cli=("$node_bin" "$ROOT/dist/cli/main.js")
lib=(--library "$FLASHMLA_LIBRARY")
names=(); statuses=(); seconds=()

step() { # name budget json-file command...
  local name=$1 budget=$2 json=$3; shift 3
  echo; echo "=== $name (limit ${budget}s) ==="
  local t0=$SECONDS rc
  if [ -n "$json" ]; then
    timeout --kill-after=10 "$budget" "$@" --json >"$OUT/$json" 2> >(tee "$OUT/$json.log" >&2); rc=$?
  else
    timeout --kill-after=10 "$budget" "$@"; rc=$?
  fi
  local status=PASS
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT"; elif [ $rc -ne 0 ]; then status="FAIL($rc)"; fi
  names+=("$name"); statuses+=("$status"); seconds+=($((SECONDS - t0)))
  echo "--- $name: $status in $((SECONDS - t0)) s"
}

step doctor 30 doctor.json "${cli[@]}" doctor "${lib[@]}" --device "$DEVICE"
"$node_bin" -e 'const i=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));console.log(`backend (auto): ${i.backend}: ${i.reason}`)' "$OUT/doctor.json" 2>/dev/null
step "compare full: cuda vs reference" 130 compare-full.json "${cli[@]}" compare --a cuda --b reference --matrix full "${lib[@]}" --device "$DEVICE"
step "compare quick: cuda vs oracle" 45 compare-oracle.json "${cli[@]}" compare --a cuda --b oracle --matrix quick "${lib[@]}" --device "$DEVICE"
step "bench: FlashMLA shapes on cuda" 90 bench.json "${cli[@]}" bench --backend cuda --shapes flashmla "${lib[@]}" --svg "$OUT/bench.svg"
# FlashMLA's prefill grid at its sizes reaches 2.3 TFLOP a case, too much for the CPU reference:
# the cases whose full-topk work is at most 2 GFLOP (76 of 376: the 54 at s_q = 1 and 22 at s_q = 62) fit the budget.
step "compare prefill: cuda vs reference" 150 compare-prefill.json "${cli[@]}" compare --a cuda --b reference --matrix prefill-full --max-work 2 "${lib[@]}" --device "$DEVICE"
step "bench: FlashMLA prefill cases on cuda" 120 bench-prefill.json "${cli[@]}" bench --backend cuda --shapes prefill "${lib[@]}" --svg "$OUT/bench-prefill.svg"

# --- Short table -----------------------------------------------------------------------------------
echo
echo "=== gpu-check summary (details in $OUT) ==="
"$node_bin" - "$OUT" <<'EOF'
const fs = require('fs');
const out = process.argv[2];
const read = (f) => { try { return JSON.parse(fs.readFileSync(`${out}/${f}`, 'utf8')); } catch { return null; } };
const d = read('doctor.json');
if (d) {
  const dev = d.devices?.find((x) => x.index === d.device);
  console.log(`device:  ${dev ? `${dev.name} (cc ${dev.computeCapability}, ${dev.sms} SMs)` : 'none'}; runtime ${d.cuda?.runtimeVersion ?? '?'}, driver ${d.cuda?.driverVersion ?? '?'}`);
  console.log(`library: ${d.library?.path ?? 'none'} [${d.library?.kind ?? '?'}]; backend (auto): ${d.backend}`);
}
for (const [f, label] of [['compare-full.json', 'cuda vs reference (full)'], ['compare-oracle.json', 'cuda vs oracle (quick)'], ['compare-prefill.json', 'cuda vs reference (prefill-full, ≤ 2 GFLOP)']]) {
  const r = read(f);
  if (!r) { console.log(`${label}: no result`); continue; }
  const worst = (k) => Math.max(0, ...r.results.filter((c) => c[k]).map((c) => c[k].maxAbsErr));
  const cos = Math.max(0, ...r.results.filter((c) => c.out).map((c) => Math.abs(c.out.cosDiff)));
  const ml = r.results.some((c) => c.maxLogits) ? `, max_logits |Δ| ${worst('maxLogits').toExponential(1)}` : '';
  console.log(`${label}: ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped; worst out |Δ| ${worst('out').toExponential(1)}${ml}, lse |Δ| ${worst('lse').toExponential(1)}, out cos_diff ${cos.toExponential(1)}`);
  for (const c of r.results.filter((c) => !c.pass && !c.skipped).slice(0, 5)) {
    console.log(`  FAIL ${c.name}: ${[...c.errors.map((e) => `[${e.code}] ${e.message}`), ...[c.out, c.maxLogits, c.lse].filter((t) => t && !t.pass).map((t) => `${t.name}: ${t.reason}`)].join('; ')}`);
  }
}
for (const f of ['bench.json', 'bench-prefill.json']) {
  const b = read(f);
  if (!b) continue;
  const w = Math.max(...b.rows.map((r) => r.shape.length));
  console.log(`${f === 'bench.json' ? 'decode' : 'prefill'} bench (${b.timing}):`);
  for (const r of b.rows) {
    console.log(`  ${r.shape.padEnd(w)}  ${r.medianMs.toFixed(3).padStart(9)} ms  ${(r.gflops / 1000).toFixed(1).padStart(6)} TFLOP/s  ${r.gbps.toFixed(0).padStart(5)} GB/s  JS ${r.jsMsPerCall.toFixed(3)} ms/call`);
  }
}
EOF
echo
fail=0
for i in "${!names[@]}"; do
  printf '  %-38s %-10s %4d s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}"
  [ "${statuses[$i]}" = PASS ] || fail=1
done
exit $fail
