#!/usr/bin/env bash
# The checks that need GPUs, for a machine that has them; prints a markdown report (also saved
# as $WORK_DIR/report.md) and exits non-zero when a check fails.
#
#  1. CUDA vs CPU embedding parity on the test fixtures (`clip embed --device cuda|cpu` on
#     tests/fixtures/{hf_tiny,openclip_tiny}), and CUDA against the PyTorch reference
#     (tests/fixtures/expected.safetensors).
#  2. A bf16 training run that learns: `clip train --device cuda --precision bf16` on the
#     bundled Noto emoji, validated on the Twemoji style it never sees; an f32 run beside it.
#  3. NCCL equivalence (needs 2 GPUs): `mpirun -np 2 clip train --device cuda` with half the
#     batch per GPU against one GPU with the whole batch: the same loss at every step and the
#     same weights after K steps. A control run (one GPU, half the batch alone) shows the
#     comparison can tell a different training apart.
#  4. Training throughput against open_clip (PyTorch) on the same GPU: same `tiny`
#     architecture, data, batch and precision (f32, and bf16 against torch.autocast bf16).
#
# usage: scripts/gpu_check.sh
#   CLIP_BIN=path   a clip binary built with --features cuda,mpi,nccl (default: build one)
#   PY=path         a python with numpy, for the comparisons (default python3)
#   PEERS_PY=path   a python with CUDA torch and open_clip for step 4 (default
#                   /tmp/peers/bin/python; step 4 is skipped, with a message, without one)
#   LEARN_STEPS LEARN_BATCH (200 256)  NCCL_STEPS NCCL_BATCH (5 64)
#   BENCH_STEPS BENCH_BATCH (100 512)  WORK_DIR (/tmp/clip-gpu-check)
#   TRAIN_DATA VAL_DATA (data/emoji-noto data/emoji-twemoji: image + same-stem .txt folders)
# needs: an NVIDIA driver; to build, a CUDA toolkit (nvcc, cuBLAS, cuRAND, NVRTC; CUDA_HOME if
# not on PATH), NCCL (libnccl), Open MPI (libopenmpi-dev openmpi-bin) and libclang-dev.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK_DIR:-/tmp/clip-gpu-check}
PY=${PY:-python3}
PEERS_PY=${PEERS_PY:-/tmp/peers/bin/python}
LEARN_STEPS=${LEARN_STEPS:-200}; LEARN_BATCH=${LEARN_BATCH:-256}
NCCL_STEPS=${NCCL_STEPS:-5}; NCCL_BATCH=${NCCL_BATCH:-64}
BENCH_STEPS=${BENCH_STEPS:-100}; BENCH_BATCH=${BENCH_BATCH:-512}
TRAIN_DATA=${TRAIN_DATA:-data/emoji-noto}; VAL_DATA=${VAL_DATA:-data/emoji-twemoji}
# f32 embeddings on two devices: the CPU matches PyTorch to ~1e-6 and the tests allow 1e-4;
# a wrong kernel is off by far more.
EMBED_TOL=1e-4
# NCCL vs one GPU, both f32: the runs sum in different orders (other GEMM shapes, a sum over
# ranks), so they agree to rounding, not to the bit; the CPU test of the same scheme holds
# to 1e-5. The control must differ by more than CONTROL_MIN at its first loss.
# One tensor alone is held to NCCL_TENSOR_TOL: where a gradient is near rounding noise AdamW
# still takes an lr-sized step, so small tensors (biases) agree less closely (CPU MPI, 2
# steps: whole model 3e-7, worst bias 9e-5; a different training: 2e-2 and 1.2).
NCCL_TOL=1e-4; NCCL_TENSOR_TOL=1e-3; CONTROL_MIN=1e-3
# Learning: the loss at least halves and image→text R@1 on the unseen style reaches 100×
# chance (1/1906); f32 on CPU reaches ~0.10 at 200 steps (docs/PERFORMANCE.md). bf16 ends
# within BF16_GAP of the f32 run's R@1.
LEARN_R1=0.05; BF16_GAP=0.03

die() { echo "gpu_check: $*" >&2; exit 2; }
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs NVIDIA GPUs"
GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
((GPUS > 0)) || die "nvidia-smi lists no GPU"
# candle's kernels are compiled for this capability (9.0 → 90), never guessed.
CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')}
export CUDA_COMPUTE_CAP
"$PY" -c 'import numpy' 2>/dev/null || die "$PY has no numpy (set PY=...)"
# Open MPI refuses root unless told; GPU containers often run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The toolkit: nvcc on PATH, else under CUDA_HOME or /usr/local/cuda; its libraries (cuBLAS,
# cuRAND, NVRTC) are linked dynamically, so the binary needs them on the loader's path too.
if ! command -v nvcc >/dev/null && [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then
    export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
fi
if command -v nvcc >/dev/null; then
    CUDA_ROOT=$(dirname "$(dirname "$(realpath "$(command -v nvcc)")")")
    export CUDA_HOME=${CUDA_HOME:-$CUDA_ROOT}
    export LD_LIBRARY_PATH="$CUDA_ROOT/lib64:$CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [[ -n "${CLIP_BIN:-}" ]]; then
    CLIP=$CLIP_BIN
else
    command -v nvcc >/dev/null \
        || die "no nvcc: install a CUDA toolkit (or set CUDA_HOME), or pass CLIP_BIN"
    command -v mpicc >/dev/null || die "no mpicc: apt-get install libopenmpi-dev openmpi-bin libclang-dev"
    echo "building: cargo build --release --features cuda,mpi,nccl (sm_$CUDA_COMPUTE_CAP)" >&2
    cargo build --release --features cuda,mpi,nccl -q
    CLIP="${CARGO_TARGET_DIR:-target}/release/clip"
fi
[[ -x "$CLIP" ]] || die "$CLIP is not an executable"
CLIP=$(realpath "$CLIP")
rm -rf "$WORK"; mkdir -p "$WORK"

# Comparisons over safetensors files and run directories, with numpy alone.
cat >"$WORK/check.py" <<'PY'
import json, struct, sys
import numpy as np

DT = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U32": np.uint32, "I32": np.int32}

def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    out = {}
    for k, v in json.loads(b[8:8 + n]).items():
        if k != "__metadata__":
            s, e = v["data_offsets"]
            out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out

def rel_l2(a, b):
    """Largest relative L2 error over rows (tests/common's max_rel_l2)."""
    assert a.shape == b.shape and a.size > 0, (a.shape, b.shape)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    cols = a.shape[-1] if a.ndim else 1
    a, b = a.astype(np.float64).reshape(-1, cols), b.astype(np.float64).reshape(-1, cols)
    return float(np.max(np.sqrt(((a - b) ** 2).sum(1) / np.maximum((b ** 2).sum(1), 1e-300))))

def lines(run):
    return [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]

def losses(run):
    return [l["loss"] for l in lines(run) if "loss" in l]

cmd, a = sys.argv[1], sys.argv[2:]
if cmd == "embed":  # FILE_A KEY_A FILE_B KEY_B [ROWS]: rel L2 between two tensors
    x, y = load(a[0])[a[1]], load(a[2])[a[3]]
    if len(a) > 4:
        rows = [int(r) for r in a[4].split(",")]
        x, y = x[rows], y[rows]
    print(f"{rel_l2(x, y):.2e}")
elif cmd == "same-training":  # RUN_A RUN_B: loss gap, weight gaps (see below), worst tensor
    la, lb = losses(a[0]), losses(a[1])
    assert la and len(la) == len(lb) and np.isfinite(la).all(), (la, lb)
    dl = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
    wa = load(f"{a[0]}/final/model.safetensors")
    wb = load(f"{a[1]}/final/model.safetensors")
    assert wa.keys() == wb.keys()
    # Whole-model relative L2, and the largest per-tensor one over tensors with RMS >= 1e-4:
    # attention key biases get no gradient (softmax ignores a shift) and only drift by
    # rounding noise that AdamW scales up, so their relative error is noise over ~zero.
    num = sum(float(((wa[k].astype(np.float64) - wb[k]) ** 2).sum()) for k in wa)
    den = sum(float((wb[k].astype(np.float64) ** 2).sum()) for k in wb)
    big = [k for k in wb if np.sqrt(np.mean(wb[k].astype(np.float64) ** 2)) >= 1e-4]
    worst = max(big, key=lambda k: rel_l2(wa[k], wb[k]))
    print(f"{dl:.2e} {np.sqrt(num / den):.2e} {rel_l2(wa[worst], wb[worst]):.2e} {worst}")
elif cmd == "first-loss-gap":  # RUN_A RUN_B
    print(f"{abs(losses(a[0])[0] - losses(a[1])[0]):.2e}")
elif cmd == "learn":  # RUN: first loss, last loss, final R@1 both ways
    ls = losses(a[0])
    val = [l["val"] for l in lines(a[0]) if "val" in l]
    v = val[-1] if val else {}
    nan = float("nan")
    print(f'{ls[0]:.3f} {ls[-1]:.3f} {v.get("image_to_text_R@1", nan):.4f} {v.get("text_to_image_R@1", nan):.4f}')
elif cmd == "rate":  # RUN: samples/s of the last logged window (steady state)
    print(f'{[l for l in lines(a[0]) if "samples_per_s" in l][-1]["samples_per_s"]:.1f}')
elif cmd == "le":  # X Y: exit status 0 when X <= Y; each an arithmetic expression (NaN: 1)
    env = {"nan": float("nan"), "__builtins__": {}}
    sys.exit(0 if float(eval(a[0], env)) <= float(eval(a[1], env)) else 1)
elif cmd == "ratio":  # X Y
    print(f"{float(a[0]) / float(a[1]):.2f}")
elif cmd == "field":  # FILE KEY: a number from a one-line JSON file
    print(f"{json.load(open(a[0]))[a[1]]:.1f}")
PY
check() { "$PY" "$WORK/check.py" "$@"; }
FAILED=0
# verdict COMMAND...: "pass" or "**FAIL**" (any FAIL in the report makes the exit status 1).
verdict() { if "$@"; then echo pass; else echo "**FAIL**"; fi; }
both() { "$1" && "$2"; }
REPORT="$WORK/report.md"
say() { echo "$*" >>"$REPORT"; }
# runlog NAME COMMAND...: COMMAND's output goes to $WORK/NAME.log; when it fails, its status
# and the log's tail are kept for the report's last section and runlog returns 1 (the other
# checks still run).
runlog() {
    local name=$1 rc=0
    shift
    "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    ((rc == 0)) && return 0
    {
        echo ""
        echo "**FAIL**: \`$name\` exited with status $rc; the end of $WORK/$name.log:"
        echo '```'
        tail -n 20 "$WORK/$name.log"
        echo '```'
    } >>"$WORK/failures.md"
    return 1
}

say "# GPU check, $(date -u '+%F %H:%M') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say ""
say "$GPUS × $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1) (sm_$CUDA_COMPUTE_CAP), driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1); \`$CLIP\`"

# 1. Embedding parity.
say ""
say "## 1. CUDA vs CPU embeddings (fixtures; max relative L2 over rows, tolerance $EMBED_TOL)"
say ""
say "| model | tensor | CUDA vs CPU | CUDA vs PyTorch | verdict |"
say "|---|---|---|---|---|"
F=tests/fixtures
# JPEG rows 4 and 8 decode differently from Pillow; the other image rows match PyTorch.
EXACT_ROWS=0,1,2,3,5,6,7,9,10,11
for m in hf_tiny openclip_tiny; do
    ran=1
    for dev in cpu cuda; do
        runlog "embed-$m-$dev" "$CLIP" embed --model "$F/$m" --images "$F/images" \
            --texts "$F/captions.txt" --device "$dev" --out "$WORK/$m-$dev.safetensors" || ran=0
    done
    if ((!ran)); then
        say "| $m | — | — | — | **FAIL** (see the end) |"
        continue
    fi
    ref=hf; [[ $m == openclip_tiny ]] && ref=oc
    for key in image_embeds text_embeds; do
        rows=(); [[ $key == image_embeds ]] && rows=("$EXACT_ROWS")
        d_cpu=$(check embed "$WORK/$m-cuda.safetensors" "$key" "$WORK/$m-cpu.safetensors" "$key")
        d_ref=$(check embed "$WORK/$m-cuda.safetensors" "$key" "$F/expected.safetensors" "$ref.$key" "${rows[@]}")
        near_cpu() { check le "$d_cpu" "$EMBED_TOL"; }
        near_ref() { check le "$d_ref" "$EMBED_TOL"; }
        ok=$(verdict both near_cpu near_ref)
        say "| $m | $key | $d_cpu | $d_ref | $ok |"
    done
done

# 2. Learning in bf16 (and f32 beside it).
say ""
say "## 2. Training on one GPU: Noto emoji, validated on Twemoji (never seen; chance R@1 0.0005)"
say ""
say "\`clip train --device cuda --precision P --preset tiny --data $TRAIN_DATA --val-data $VAL_DATA --steps $LEARN_STEPS --batch-size $LEARN_BATCH --lr 1e-3 --hflip 0.5\`"
say ""
say "| precision | first loss | last loss | image→text R@1 | text→image R@1 | steady samples/s | verdict |"
say "|---|---|---|---|---|---|---|"
f32_i2t=nan
for p in f32 bf16; do
    if ! runlog "learn-$p" "$CLIP" train --device cuda --precision "$p" --preset tiny \
        --data "$TRAIN_DATA" --val-data "$VAL_DATA" --val-every 0 --steps "$LEARN_STEPS" \
        --batch-size "$LEARN_BATCH" --lr 1e-3 --hflip 0.5 --log-every $((LEARN_STEPS / 10)) \
        --examples 0 --out "$WORK/learn-$p"; then
        say "| $p | — | — | — | — | — | **FAIL** (see the end) |"
        continue
    fi
    read -r first last i2t t2i < <(check learn "$WORK/learn-$p")
    rate=$(check rate "$WORK/learn-$p")
    learns() { check le "$last" "$first / 2" && check le "$LEARN_R1" "$i2t"; }
    if [[ $p == f32 ]]; then
        f32_i2t=$i2t
        ok=$(verdict learns)
    else
        near_f32() { check le "$f32_i2t - $i2t" "$BF16_GAP"; }
        ok=$(verdict both learns near_f32)
    fi
    say "| $p | $first | $last | $i2t | $t2i | $rate | $ok |"
done
say ""
say "Pass: the loss at least halves and image→text R@1 ≥ $LEARN_R1; bf16 within $BF16_GAP of f32's R@1."

# 3. NCCL: two GPUs with half the batch each = one GPU with the whole batch.
say ""
say "## 3. NCCL: 2 ranks × $((NCCL_BATCH / 2)) vs 1 rank × $NCCL_BATCH, $NCCL_STEPS steps, f32"
say ""
if ((GPUS < 2)); then
    say "Skipped: this machine has $GPUS GPU; the NCCL check needs 2."
elif ! command -v mpirun >/dev/null; then
    say "**FAIL**: no mpirun (apt-get install openmpi-bin libopenmpi-dev)."
else
    nccl_args=(train --device cuda --preset tiny --data "$TRAIN_DATA" --steps "$NCCL_STEPS"
        --log-every 1 --seed 3 --examples 0)
    runlog nccl-one "$CLIP" "${nccl_args[@]}" --batch-size "$NCCL_BATCH" --out "$WORK/nccl-one" || true
    # NCCL_DEBUG=INFO makes NCCL announce itself: proof the ranks talked over NCCL, not MPI.
    runlog nccl-two env NCCL_DEBUG=INFO mpirun -np 2 --bind-to none "$CLIP" "${nccl_args[@]}" \
        --batch-size "$NCCL_BATCH" --out "$WORK/nccl-two" || true
    runlog nccl-half "$CLIP" "${nccl_args[@]}" --batch-size $((NCCL_BATCH / 2)) \
        --out "$WORK/nccl-half" || true
    read -r dl dw dt worst < <(check same-training "$WORK/nccl-one" "$WORK/nccl-two" 2>/dev/null || echo nan nan nan -)
    control=$(check first-loss-gap "$WORK/nccl-one" "$WORK/nccl-half" 2>/dev/null || echo nan)
    used_nccl() { grep -q 'NCCL INFO' "$WORK/nccl-two.log"; }
    say "| check | value | bound | verdict |"
    say "|---|---|---|---|"
    say "| the ranks used NCCL (\`NCCL INFO\` in the job's output) | $(used_nccl && echo yes || echo no) | yes | $(verdict used_nccl) |"
    say "| largest relative loss gap over the $NCCL_STEPS steps | $dl | ≤ $NCCL_TOL | $(verdict check le "$dl" "$NCCL_TOL") |"
    say "| relative L2 of all the weights after $NCCL_STEPS steps | $dw | ≤ $NCCL_TOL | $(verdict check le "$dw" "$NCCL_TOL") |"
    say "| largest relative L2 of one weight tensor (RMS ≥ 1e-4; \`$worst\`) | $dt | ≤ $NCCL_TENSOR_TOL | $(verdict check le "$dt" "$NCCL_TENSOR_TOL") |"
    say "| control: one GPU on half the batch alone, first-loss gap | $control | > $CONTROL_MIN | $(verdict check le "$CONTROL_MIN" "$control") |"
fi

# 4. Throughput against open_clip on the same GPU.
say ""
say "## 4. Training throughput vs open_clip, same GPU (\`tiny\`, batch $BENCH_BATCH, $BENCH_STEPS steps)"
say ""
if ! "$PEERS_PY" -c 'import torch, open_clip; assert torch.cuda.is_available()' 2>/dev/null; then
    say "Skipped: $PEERS_PY has no CUDA torch with open_clip (see ../shared/bench/README.md; install the CUDA build of torch)."
else
    # open_clip's side: the `tiny` CLIP of ../shared/bench/openclip_emoji.py on the GPU, the
    # same images and captions, random resized crop (0.7, 1) and flip on the GPU in one batched
    # op (our loader does them on CPU threads, overlapped with the GPU), AdamW, ClipLoss,
    # autocast for bf16. Samples/s over the last fifth of the steps, as our last log window.
    cat >"$WORK/openclip_gpu.py" <<'PY'
import json, math, os, random, sys, time
import numpy as np, torch, torch.nn.functional as F, open_clip
from open_clip.loss import ClipLoss
from PIL import Image

data, steps, bs, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dev = torch.device("cuda")
torch.manual_seed(0); random.seed(0)
CFG = {"embed_dim": 256,
       "vision_cfg": {"image_size": 64, "layers": 6, "width": 256, "head_width": 64, "patch_size": 8, "mlp_ratio": 4.0},
       "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4}}
model = open_clip.model.CLIP(**CFG).to(dev)
tok = open_clip.tokenizer.SimpleTokenizer(context_length=32)
stems = sorted(f[:-4] for f in os.listdir(data) if f.endswith(".png"))
caps = [open(os.path.join(data, s + ".txt")).read().strip() for s in stems]
def load(stem):
    im = Image.open(os.path.join(data, stem + ".png")).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255)); bg.alpha_composite(im)
    return np.asarray(bg.convert("RGB").resize((64, 64), Image.BICUBIC))
x = torch.from_numpy(np.stack([load(s) for s in stems])).permute(0, 3, 1, 2).float().div(255).to(dev)
t = tok(caps).to(dev)
mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev).view(1, 3, 1, 1)
def augment(im):
    n = im.shape[0]
    s = torch.sqrt(torch.empty(n, device=dev).uniform_(0.7, 1.0))
    flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1] = s * flip, s
    theta[:, 0, 2], theta[:, 1, 2] = (torch.rand(n, device=dev) * 2 - 1) * (1 - s), (torch.rand(n, device=dev) * 2 - 1) * (1 - s)
    grid = F.affine_grid(theta, im.shape, align_corners=False)
    return F.grid_sample(im, grid, mode="bilinear", align_corners=False)
decay = [p for k, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in k]
rest = [p for k, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in k)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                        lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
loss_fn = ClipLoss()
order = []
window = max(1, steps // 5)
model.train()
for step in range(steps):
    if step == steps - window:
        torch.cuda.synchronize(); t0 = time.time()
    if len(order) < bs:
        order += torch.randperm(len(stems)).tolist()
    idx, order = torch.tensor(order[:bs], device=dev), order[bs:]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        fi, ft, ls = model((augment(x[idx]) - mean) / std, t[idx])
        loss = loss_fn(fi.float(), ft.float(), ls.float())
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
torch.cuda.synchronize()
print(json.dumps({"samples_per_s": window * bs / (time.time() - t0), "last_loss": loss.item()}))
PY
    say "| precision | clip train (samples/s) | open_clip (samples/s) | ratio |"
    say "|---|---|---|---|"
    for p in f32 bf16; do
        ours=nan theirs=nan
        runlog "bench-$p" "$CLIP" train --device cuda --precision "$p" --preset tiny \
            --data "$TRAIN_DATA" --steps "$BENCH_STEPS" --batch-size "$BENCH_BATCH" \
            --log-every $((BENCH_STEPS / 5)) --examples 0 --out "$WORK/bench-$p" \
            && ours=$(check rate "$WORK/bench-$p")
        runlog "openclip-$p" "$PEERS_PY" "$WORK/openclip_gpu.py" "$TRAIN_DATA" "$BENCH_STEPS" \
            "$BENCH_BATCH" "$p" && theirs=$(tail -n 1 "$WORK/openclip-$p.log" >"$WORK/openclip-$p.json" \
            && check field "$WORK/openclip-$p.json" samples_per_s)
        say "| $p | $ours | $theirs | $(check ratio "$ours" "$theirs")× |"
    done
    say ""
    say "Steady state: samples/s over the last fifth of the steps on both sides."
fi

if [[ -s "$WORK/failures.md" ]]; then
    say ""
    say "## Commands that failed"
    cat "$WORK/failures.md" >>"$REPORT"
fi
cat "$REPORT"
grep -q 'FAIL' "$REPORT" && FAILED=1
exit "$FAILED"
