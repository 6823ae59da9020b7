#!/usr/bin/env bash
# One GPU session: the CUDA tests and every GPU benchmark, in stages that each fit one 10-minute
# command: a stage's steps share STAGE_BUDGET seconds (default 540, set-up included), each step also
# has its own cap, and a step cut short keeps what it wrote (the benchmarks rewrite their reports as
# they go).
#
#   bash benchmarks/vendor_toolkits.sh                     # here, once: the toolkits into benchmarks/vendor
#   bash benchmarks/gpu_session.sh STAGE [STAGE ...]      # there, from the repository root,
#                                                          # with benchmarks/vendor carried along
#
# Stages, in order of priority (estimates for one H100 on a fresh machine):
#   tests     pytest -m gpu (17 tests), the rest of the suite with CUDA visible, and the   ~4 min
#             two-rank torchrun test with CUDA hidden (two ranks cannot share one GPU)
#   speed     speed.py: the headline case alone (ResNet-50, batch 256, fp32; cam and       ~3 min
#             gradcam against every toolkit: the throughput and memory targets), then
#             ResNet-50/18, fp32/bf16/fp16, 7 methods against the plain forward
#   scorecam  speed.py: Score-CAM, ResNet-50/18, batch 8 each, vs pytorch-grad-cam and    ~2.5 min
#             torchcam (join its targets with the speed stage's afterwards: see the stage)
#   methods   speed.py: issue 12's methods against their peers (ResNet-18, batch 64), and     ~5 min
#             SS-CAM / IS-CAM against torchcam (the 2x bars; batch 2, 224 px, the defaults)
#   kernels   speed_kernels.py (torch vs Triton, + numerical check) and speed.py with     ~1.5 min
#             CAMKIT_TRITON=1 (ResNet-50 batch 256, fp32 / bf16)
#   forward   speed_forward.py, ResNet-50 batch 256: eager options (autocast,             ~5 min
#             channels-last), then torch.compile (fp32; bf16 + channels-last)
#   graphs    speed_forward.py, ResNet-50 batch 32: torch.compile with CUDA graphs         ~3 min
#   skeleton  skeleton_speed.py on CUDA: default sizes, then batch 64 x 300 frames        ~1 min
#   metrics   metrics_battery.py --part speed: camkit's metrics against Quantus 0.6 on the    ~5 min
#             same GPU (ResNet-18, 16 images at 224 px; Quantus from the registry if absent)
#   explain   benchmarks/explain_speed.py on CUDA (optional, not in "all")                 ~2 min
#   scale     benchmarks/explain_dataset.py on CUDA: camkit explain over 2,000 JPEGs (maps  ~4 min
#             + overlays; --no-overlays map dumps) vs the forward and a grad-cam loop (optional)
#   all       every stage but explain, in order (~30 min: only where a command may run that long)
#
# Results: one folder per benchmark, logs/ with each command's whole output, summary.txt with each
# command's exit status and seconds, all packed into $OUT/gpu_results.tar.gz at exit (the device
# returns at most 8 files); without $OUT, copied to benchmarks/results/gpu/. Each stage sets up
# what it needs (a fresh machine may come between stages): camkit installed in editable mode (or
# the source tree put on PYTHONPATH); the comparison toolkits from benchmarks/vendor, else from the
# package registry when it can be reached (toolkits that do not import are skipped, and said so).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
# Everything is written under a work folder and, at exit, packed into $OUT/gpu_results.tar.gz (plus
# summary.txt beside it): the device tool returns at most 8 files from $OUT. Without $OUT the
# folder is copied to benchmarks/results/gpu/ instead.
DEST=${OUT:-}
OUT=$(mktemp -d /tmp/gpu_session.XXXXXX)
mkdir -p "$OUT/logs" && touch "$OUT/summary.txt"
finish() {
    if [ -n "$DEST" ]; then
        mkdir -p "$DEST"
        tar czf "$DEST/gpu_results.tar.gz" -C "$OUT" . && cp "$OUT/summary.txt" "$DEST/summary.txt"
        echo "packed $OUT into $DEST/gpu_results.tar.gz"
    else
        mkdir -p "$ROOT/benchmarks/results/gpu" && cp -r "$OUT"/. "$ROOT/benchmarks/results/gpu/"
        echo "results in benchmarks/results/gpu/"
    fi
}
trap finish EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DEFAULT_TIMEOUT=15 PIP_RETRIES=1
export TQDM_MININTERVAL=10 MPLBACKEND=Agg PYTHONUNBUFFERED=1

say() { echo "[gpu_session $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

# Each stage must end within one 10-minute command: its steps share STAGE_BUDGET seconds (set-up
# included); a step's cap shrinks to what is left, and a step with under 30 s left is skipped.
STAGE_BUDGET=${STAGE_BUDGET:-540}
STAGE_DEADLINE=$((SECONDS + STAGE_BUDGET))

# step NAME LIMIT_S COMMAND...: run with a time cap, output to the terminal and logs/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((STAGE_DEADLINE - SECONDS - 20))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 30 ]; then
        say "$name: SKIPPED, the stage's ${STAGE_BUDGET} s are spent"
        return 0
    fi
    local start=$SECONDS
    echo "=== $name (cap ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log" | grep -v -E '(it/s|s/it)\]?$' | tail -n 200
    local rc=${PIPESTATUS[0]}
    local note=""
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && note=" (TIMED OUT: partial results)"
    say "$name: rc=$rc in $((SECONDS - start)) s$note"
    return 0
}

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

REGISTRY=""
registry_reachable() {  # probes once per stage: pip download of a tiny package
    if [ -z "$REGISTRY" ]; then
        if timeout 40 "$PY" -m pip download -q --no-deps --dest "$(mktemp -d)" ttach >/dev/null 2>&1; then
            REGISTRY=yes
        else
            REGISTRY=no
            say "package registry unreachable: nothing will be installed from it"
        fi
    fi
    [ "$REGISTRY" = yes ]
}

pip_install() { timeout 150 "$PY" -m pip install -q "$@" 2>&1 | tail -n 5; return "${PIPESTATUS[0]}"; }

setup_camkit() {
    "$PY" - <<'PY' || { say "python3 has no CUDA torch: stopping"; exit 2; }
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY
    # runtime and test dependencies of camkit that python3 may lack
    local missing=()
    read -r -a missing < <("$PY" - <<'PY'
import importlib
dists = {"numpy": "numpy", "scipy": "scipy", "cv2": "opencv-python-headless", "pluggy": "pluggy",
         "matplotlib": "matplotlib", "tqdm": "tqdm", "sklearn": "scikit-learn", "skimage": "scikit-image",
         "pytest": "pytest", "torchvision": "torchvision"}
missing = []
for module, dist in dists.items():
    try:
        importlib.import_module(module)
    except Exception:
        missing.append(dist)
print(" ".join(missing))
PY
)
    if [ ${#missing[@]} -gt 0 ]; then
        say "missing modules: ${missing[*]}"
        if [[ " ${missing[*]} " == *" torchvision "* ]]; then
            say "torchvision is missing: install it by hand (a registry install could replace torch)"
        fi
        local wanted=()
        for dist in "${missing[@]}"; do [ "$dist" != torchvision ] && wanted+=("$dist"); done
        if [ ${#wanted[@]} -gt 0 ] && registry_reachable; then
            pip_install "${wanted[@]}" "torch==$("$PY" -c 'import torch; print(torch.__version__)')" \
                || say "could not install ${wanted[*]}"
        fi
    fi
    # camkit itself: entry points from an editable install, else the source tree on PYTHONPATH
    if ! (cd /tmp && "$PY" -c "import camkit, camkit_plugins.gpu" >/dev/null 2>&1); then
        pip_install --no-deps --no-build-isolation -e . >/dev/null \
            || pip_install --no-deps --no-build-isolation --user -e . >/dev/null \
            || { registry_reachable && pip_install --no-deps -e . >/dev/null; } || true
    fi
    if ! (cd /tmp && "$PY" -c "import camkit, camkit_plugins.gpu" >/dev/null 2>&1); then
        local shim
        shim=$(mktemp -d)
        ln -s "$ROOT/plugins" "$shim/camkit_plugins"
        export PYTHONPATH="$ROOT:$shim${PYTHONPATH:+:$PYTHONPATH}"
        say "camkit not installable here: using the source tree on PYTHONPATH ($shim/camkit_plugins -> plugins)"
    fi
    have triton || say "triton does not import: the Triton kernels will be reported as unavailable"
}

setup_toolkits() {
    # benchmarks/vendor (made here by benchmarks/vendor_toolkits.sh, carried to the device): the
    # machine cannot fetch packages, and these four are pure Python
    if [ -d "$ROOT/benchmarks/vendor" ]; then
        export PYTHONPATH="$ROOT/benchmarks/vendor${PYTHONPATH:+:$PYTHONPATH}"
        say "comparison toolkits from benchmarks/vendor: $(tr '\n' ' ' < "$ROOT/benchmarks/vendor/VERSIONS.txt")"
    fi
    local toolkits=()
    have pytorch_grad_cam || toolkits+=(grad-cam ttach)
    have torchcam || toolkits+=(torchcam)
    have captum || toolkits+=(captum)
    if [ ${#toolkits[@]} -gt 0 ] && registry_reachable; then
        # --no-deps: their pins (opencv-python, numpy<2, torch) must not replace what is installed
        pip_install --no-deps "${toolkits[@]}" || say "pip could not install all of: ${toolkits[*]}"
    fi
    local name
    for name in pytorch_grad_cam torchcam captum; do
        if ! have "$name"; then
            say "toolkit $name does not import: skipped ($("$PY" -c "import $name" 2>&1 | tail -n 1))"
        fi
    done
}

show() { [ -f "$1" ] && { echo "--- $1"; cat "$1"; }; }

stage_tests() {
    setup_camkit
    mkdir -p "$OUT/tests"
    "$PY" -c "import torch; print(torch.__config__.show())" > "$OUT/tests/torch_config.txt" 2>&1
    nvidia-smi > "$OUT/tests/nvidia-smi.txt" 2>&1 || true
    step tests-gpu 150 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$OUT/tests/gpu.xml"
    # with one GPU, two torchrun ranks would ask for cuda:0 and cuda:1: that test runs on the CPU below
    local ddp=tests/test_skeleton_cli.py::test_distributed_training_with_two_cpu_processes
    step tests-rest 240 "$PY" -m pytest -q -m "not gpu" tests -p no:cacheprovider --deselect "$ddp" \
        --junitxml="$OUT/tests/rest.xml"
    CUDA_VISIBLE_DEVICES="" step tests-ddp-on-cpu 80 "$PY" -m pytest -q "$ddp" -p no:cacheprovider \
        --junitxml="$OUT/tests/ddp.xml"
}

stage_speed() {
    setup_camkit
    setup_toolkits
    # the issue's targets: cam >= 0.98x and gradcam >= 0.9x plain-forward throughput, gradcam peak
    # memory <= 1.2x inference, on ResNet-50 batch 256 fp32; ResNet-18 and bf16 / fp16 beside it
    # the headline case first and alone (its report is written when it ends), with every toolkit;
    # then every method, model and dtype for camkit against the plain forward (pytorch-grad-cam's
    # EigenCAM alone would take minutes at batch 256: 256 CPU SVDs per call)
    step speed 200 "$PY" benchmarks/speed.py --device cuda --models resnet50 --batch-sizes 256 --dtypes fp32 \
        --methods cam,gradcam --repeats 10 --out "$OUT/speed"
    [ -f "$OUT/speed/speed.md" ] && sed -n '/^## Targets/,$p' "$OUT/speed/speed.md"
    step speed-methods 300 "$PY" benchmarks/speed.py --device cuda --models resnet50,resnet18 --batch-sizes 256 \
        --dtypes fp32,bf16,fp16 --methods cam,gradcam,gradcam++,xgradcam,layercam,hirescam,eigencam \
        --toolkits "" --repeats 10 --out "$OUT/speed_methods"
}

stage_scorecam() {
    setup_camkit
    setup_toolkits
    # Score-CAM >= 10x pytorch-grad-cam on the same batch. Each device call starts with an empty $OUT,
    # so the targets of both stages are joined afterwards on the machine that fetched them:
    #   python benchmarks/speed.py --device cpu --methods "" --include A/speed.json --include B/speed.json --out merged
    step scorecam 470 "$PY" benchmarks/speed.py --device cuda --models resnet50,resnet18 --methods scorecam \
        --scorecam-batch 8 --scorecam-repeats 3 --out "$OUT/speed_scorecam"
    [ -f "$OUT/speed_scorecam/speed.md" ] && sed -n '/^## Targets/,$p' "$OUT/speed_scorecam/speed.md"
}

stage_methods() {
    setup_camkit
    setup_toolkits
    # issue 12: gradient methods <= 1.15x a forward (CPU bar; here for the record), Smooth Grad-CAM++ and
    # FullGrad >= 2x their peers, the maps' differences; then SS-CAM / IS-CAM >= 2x torchcam, where the
    # masked forwards decide (camkit's chunks of 256 against torchcam's 32)
    step methods 250 "$PY" benchmarks/speed.py --device cuda --models resnet18 --batch-sizes 64 --dtypes fp32 \
        --methods gradcam,gradcam-elementwise,eigengradcam,shapleycam,segeigencam,fem,kpcacam,finercam,smoothgradcam++,fullgrad \
        --repeats 5 --out "$OUT/speed_new_methods"
    [ -f "$OUT/speed_new_methods/speed.md" ] && sed -n '/^## Targets/,$p' "$OUT/speed_new_methods/speed.md"
    step perturbation 270 "$PY" benchmarks/speed.py --device cuda --models resnet18 --methods sscam,iscam \
        --toolkits torchcam --scorecam-batch 2 --scorecam-repeats 2 --out "$OUT/speed_perturbation"
    [ -f "$OUT/speed_perturbation/speed.md" ] && sed -n '/^## Targets/,$p' "$OUT/speed_perturbation/speed.md"
}

stage_kernels() {
    setup_camkit
    step kernels 200 "$PY" benchmarks/speed_kernels.py --device cuda --batch 256 --repeats 30 --out "$OUT/kernels"
    CAMKIT_TRITON=1 step speed-triton 250 "$PY" benchmarks/speed.py --device cuda --models resnet50 \
        --batch-sizes 256 --dtypes fp32,bf16 --methods cam,gradcam,layercam --toolkits "" --repeats 10 \
        --out "$OUT/speed_triton"
    show "$OUT/kernels/speed_kernels.md"
    [ -f "$OUT/speed_triton/speed.md" ] && sed -n '/^## Targets/,$p' "$OUT/speed_triton/speed.md"
}

stage_forward() {
    setup_camkit
    step forward-eager 120 "$PY" benchmarks/speed_forward.py --device cuda --model resnet50 --batch 256 \
        --repeats 10 --out "$OUT/forward"
    step forward-compile 380 "$PY" benchmarks/speed_forward.py --device cuda --model resnet50 --batch 256 \
        --repeats 10 --compile --options "compile,bf16 + channels-last + compile" --out "$OUT/forward_compile"
    show "$OUT/forward/speed_forward.md"
    show "$OUT/forward_compile/speed_forward.md"
}

stage_graphs() {
    setup_camkit
    # CUDA graphs remove launch overhead, which shows at small batches: batch 32
    step forward-graphs 450 "$PY" benchmarks/speed_forward.py --device cuda --model resnet50 --batch 32 \
        --repeats 20 --compile --compile-mode reduce-overhead \
        --options "bf16 + channels-last,bf16 + channels-last + compile (reduce-overhead)" \
        --out "$OUT/forward_graphs"
    show "$OUT/forward_graphs/speed_forward.md"
}

stage_skeleton() {
    setup_camkit
    mkdir -p "$OUT/skeleton"
    step skeleton 140 "$PY" benchmarks/skeleton_speed.py --device cuda --json "$OUT/skeleton/skeleton_speed.json"
    step skeleton-ntu 160 "$PY" benchmarks/skeleton_speed.py --device cuda --batch 64 --frames 300 --cam-batch 64 \
        --json "$OUT/skeleton/skeleton_speed_b64_t300.json"
}

stage_metrics() {
    setup_camkit
    # Quantus 0.6 beside camkit on the same GPU (its deps without opencv-python, which would replace the
    # headless build: the Makefile's way); without Quantus the Quantus columns say why
    if ! have quantus && registry_reachable; then
        pip_install --no-deps quantus==0.6.0 && pip_install pandas cachetools || say "could not install Quantus"
    fi
    have quantus || say "quantus does not import: the speed table has camkit's columns only"
    step metrics-speed 480 "$PY" benchmarks/metrics_battery.py --part speed --device cuda --threads 16 \
        --images 16 --size 224 --out "$OUT/metrics"
    show "$OUT/metrics/battery.md"
}

stage_explain() {
    setup_camkit
    step explain 300 "$PY" benchmarks/explain_speed.py --device cuda --count 1024 --batch-size 128 --workers 8 \
        --out "$OUT/explain"
    show "$OUT/explain/explain_speed.md"
}

stage_scale() {
    setup_camkit
    step scale 420 "$PY" benchmarks/explain_dataset.py --device cuda --count 2000 --batch-size 128 --workers 8 \
        --threads 8 --loop-count 200 --out "$OUT/scale"
    show "$OUT/scale/explain_dataset.md"
}

[ $# -gt 0 ] || { sed -n '2,34p' "$0"; exit 2; }
for stage in "$@"; do
    case "$stage" in
        tests|speed|scorecam|methods|kernels|forward|graphs|skeleton|metrics|explain|scale)
            STAGE_DEADLINE=$((SECONDS + STAGE_BUDGET))
            say "stage $stage started"
            "stage_$stage"
            say "stage $stage done" ;;
        all)
            for s in tests speed scorecam methods kernels forward graphs skeleton metrics; do
                STAGE_DEADLINE=$((SECONDS + STAGE_BUDGET))
                say "stage $s started"
                "stage_$s"
                say "stage $s done"
            done ;;
        *) echo "unknown stage $stage: tests|speed|scorecam|methods|kernels|forward|graphs|skeleton|metrics|explain|scale|all" >&2
           exit 2 ;;
    esac
done
echo "--- $OUT/summary.txt"
cat "$OUT/summary.txt"
