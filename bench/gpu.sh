#!/usr/bin/env bash
# vaekit on one GPU, in one command that finishes in under 8 minutes. It runs, in this order:
#   1. the test suite's CUDA-marked tests (pytest -m cuda: tests/test_cuda.py);
#   2. training images/s and K=5000 evaluation time of every preset, against the matmul peak, with
#      bf16 autocast (amp) and channels_last each off and on (bench/arch_speed.py --compare);
#   3. the same with torch.compile off and on (compilation is slow: presets past its deadline are
#      skipped and say so);
#   4. torchrun --nproc-per-node 1 on `vaekit train` for a few steps on CUDA, then the NCCL DDP
#      smoke test: one process, a few DistributedDataParallel steps of a preset and an all-reduce in
#      a process group with vaekit's backend (cpu:gloo,cuda:nccl where CUDA exists; vaekit itself
#      opens none for one process); NCCL_DEBUG=VERSION prints NCCL's version as it starts.
# Everything printed also goes to bench/results/gpu.txt (or --out FILE, or $VAEKIT_GPU_OUT).
# Each step has its own time limit; the script's exit status is 1 when a step failed or ran out.
#
#   bench/gpu.sh                           # on a CUDA machine (default --device cuda)
#   bench/gpu.sh --device cpu --quick      # smoke run on a CPU in seconds: what the test suite runs
#                                          # (tests/test_bench_gpu.py); CUDA tests and NCCL skipped
#
# Python: $PYTHON, else .venv/bin/python in the repository, else python3. This checkout's vaekit
# is put first on PYTHONPATH.
#
# On the device machine (the `device` tool runs a command in the repository root of a copy of the
# working tree, and that machine reaches only the package registries), build the venv first:
#
#   python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[dev]' && bench/gpu.sh
#
# constraints.txt pins torch==2.13.0; from the package index on Linux x86_64 that is the CUDA build
# (this project's CPU machines have the +cpu build from PyTorch's own index, a different wheel), and
# its NVIDIA libraries are a few GB, so the install takes minutes of the machine's time. The script
# installs nothing itself: it uses whatever torch the python has, prints torch.cuda.is_available(),
# and with --device cuda refuses to start when that is False.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
DEVICE=cuda
QUICK=0
OUT="${VAEKIT_GPU_OUT:-$ROOT/bench/results/gpu.txt}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs cpu or cuda}"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "gpu.sh: error: unknown argument '$1' (known: --device cpu|cuda, --quick, --out FILE)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in
    cpu|cuda|cuda:*) ;;
    *) echo "gpu.sh: error: --device must be cpu or cuda, not '$DEVICE'" >&2; exit 2 ;;
esac
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "${DEVICE%%:*}" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu.sh: error: $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1) sees no CUDA device" \
        "(torch.cuda.is_available() is False): install torch's CUDA build, or run with --device cpu" >&2
    exit 2
fi
mkdir -p "$(dirname "$OUT")" || exit 2
: > "$OUT" || exit 2
T0=$SECONDS
SUMMARY=()
FAILED=0

say() { echo "$*" | tee -a "$OUT"; }

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, output to the terminal and $OUT
step() {
    local name="$1" limit="$2" rc t=$SECONDS
    shift 2
    say ""
    say "## $name (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT"
    rc=${PIPESTATUS[0]}
    local took=$((SECONDS - t)) verdict=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then verdict="ran out of time"; FAILED=1
    elif [ "$rc" != 0 ]; then verdict="failed (exit $rc)"; FAILED=1; fi
    SUMMARY+=("$name: $verdict, ${took} s")
}

skip() {
    say ""
    say "## $1: skipped ($2)"
    SUMMARY+=("$1: skipped ($2)")
}

say "# bench/gpu.sh --device $DEVICE$([ $QUICK = 1 ] && echo ' --quick'), $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n)"
say "# commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'unknown (no git)')"
command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 | sed 's/^/# /' | tee -a "$OUT"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT"
import platform, torch
print(f"# python {platform.python_version()}, torch {torch.__version__}, torch.cuda.is_available() {torch.cuda.is_available()}")
if torch.cuda.is_available():
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else "absent"
    print(f"# {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}")
try:  # after the torch lines: bench.common imports vaekit, whose own failure the test steps report
    from bench.common import cpu_name
    print(f"# CPU {cpu_name()}")
except Exception as e:
    print(f"# CPU unknown ({type(e).__name__}: {e})")
EOF

if [ "$QUICK" = 1 ]; then
    SPEED=(--quick --presets conv-mnist glow-mnist)
    COMPARE=(channels_last)
    COMPILE_PRESETS=()
else
    SPEED=(--steps 10 --warmup 2 --repeat 2 --eval-k 5000 --eval-warmup 1 --eval-repeat 2)
    COMPARE=(amp channels_last)
    COMPILE_PRESETS=(conv-mnist resnet-mnist pixelvae-mnist glow-mnist realnvp-mnist dense-mnist iwae-1l nice-mnist)
fi

if [ "${DEVICE%%:*}" = cuda ]; then
    step "CUDA tests" 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
else
    skip "CUDA tests" "--device $DEVICE: they need a GPU"
fi

step "speed: ${COMPARE[*]} off/on" 170 \
    "$PY" bench/arch_speed.py --device "$DEVICE" "${SPEED[@]}" --compare "${COMPARE[@]}" --deadline 140

if [ ${#COMPILE_PRESETS[@]} -gt 0 ]; then
    step "speed: torch.compile off/on" 110 \
        "$PY" bench/arch_speed.py --device "$DEVICE" "${SPEED[@]}" --presets "${COMPILE_PRESETS[@]}" \
        --compare compile --deadline 80
else
    skip "speed: torch.compile off/on" "--quick: compilation alone takes longer than a smoke run"
fi

if [ "${DEVICE%%:*}" = cuda ]; then
    TMP="$(mktemp -d)"
    # vaekit opens a process group and wraps DDP only for two processes or more, so with one its
    # gradients never reach NCCL: the second command opens the group itself, with vaekit's backend
    # (distributed.backend(): cpu:gloo,cuda:nccl where CUDA exists), and wraps a preset's loss in DDP
    cat > "$TMP/ddp_step.py" <<'EOF'
"""A few DDP steps of conv-mnist in a process group with vaekit's backend, then an all-reduce."""
import math, os, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from vaekit import distributed
from vaekit.config import get_preset
from vaekit.models import build_model

class Loss(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.loss(x)["loss"].mean()

dev = torch.device(sys.argv[1])
if dev.type == "cuda":
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(dev)
dist.init_process_group(backend=distributed.backend(), init_method="env://")
torch.manual_seed(0)
net = Loss(build_model(get_preset("conv-mnist"), (1, 28, 28)).to(dev))
ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
losses = []
for _ in range(5):
    loss = ddp((torch.rand(64, 1, 28, 28, device=dev) > 0.5).float())
    opt.zero_grad()
    loss.backward()  # DDP's reducer all-reduces the gradients here
    opt.step()
    losses.append(loss.item())
total = torch.ones(1, device=dev)
dist.all_reduce(total)
print(f"process group {dist.get_backend()}, world size {dist.get_world_size()}, device {dev}, DDP losses "
      f"{[round(v, 1) for v in losses]}, all-reduce {total.item()}")
ok = all(map(math.isfinite, losses)) and total.item() == dist.get_world_size()
dist.destroy_process_group()
sys.exit(0 if ok else 1)
EOF
    step "vaekit train under torchrun, one process" 45 "$PY" -m torch.distributed.run --standalone \
        --nproc-per-node 1 -m vaekit train --preset conv-mnist --data mnist5k --device "$DEVICE" --max-steps 20 \
        --no-progress --out "$TMP/run" --set eval_k=0 --set tensorboard=false
    step "NCCL DDP, one process" 45 env NCCL_DEBUG=VERSION "$PY" -m torch.distributed.run --standalone \
        --nproc-per-node 1 "$TMP/ddp_step.py" "$DEVICE"
    rm -rf "$TMP"
else
    skip "vaekit train under torchrun, one process" "--device $DEVICE: it is the CUDA launch check"
    skip "NCCL DDP, one process" "--device $DEVICE: NCCL needs CUDA"
fi

say ""
say "## summary ($((SECONDS - T0)) s in all; the budget on one GPU is 480 s)"
for line in "${SUMMARY[@]}"; do say "- $line"; done
exit $FAILED
