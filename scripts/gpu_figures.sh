#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md ("Real scale on a GPU") in one call on one H100/H200, offline: the
# models are the rehearsal models (the hub architectures with random weights, addlib.course.rehearsal), so the figures
# are of time and memory, never of quality.
#
#   bash scripts/gpu_figures.sh [LOG_DIR]     # one log per stage in LOG_DIR (default runs/gpu/logs)
#   SMALL=1 bash scripts/gpu_figures.sh       # the same stages at toy sizes: rehearses this script on a CPU
#
# Stages: build the models; the streaming table at 512x512 in float16 (SD-Turbo, TAESD), eager and compiled
# (torch.compile with CUDA graphs), and a short one in float32, each with the stage where the stream and
# diffusers' loop part (on an H200 their float16 images differed by up to 2.0, on a CPU by 3e-3); ADD's memory
# options on SD 2.1-base at 512x512, batch 4; notebook 06's run at its own settings (BK-SDM-Tiny, LoRA,
# checkpointing, TAESD, fp16), shortened to 32 generated images and 20 steps, with its peak memory; its
# evaluation on 50 held-out prompts with CLIP ViT-g/14; last, the eight notebooks under nbval with the GPU as
# their device, eight at once. Each stage runs under its own time limit, so one that fails or overruns leaves the
# others' figures, and the limits bound the whole call: the figure stages' add up to 8 minutes, the notebooks'
# 2 more (the device's cap per call is 10).
# Stage times on an H200 (2026-12-05, larger stages): environment 18 s, build 95 s, stream (50 frames, eager
# only) 102 s, rehearsal (five options, one round) 167 s.
set -u
log=${1:-runs/gpu/logs}
work=runs/gpu
models=runs/rehearsal
python=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$log" "$work"

stage() {  # stage NAME SECONDS COMMAND...: the command under a time limit, its output also in LOG_DIR/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$log/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

if [ -n "${SMALL:-}" ]; then
    clip=openai/clip-vit-base-patch32
    rehearsal=(--teacher nota-ai/bk-sdm-tiny --resolution 64 --batch-size 1 --steps 1 --rounds 1 --num-frames 4
               --options none "+ TAESD")
    stream=(--resolution 64 --dtype float32 --num-frames 6 --repeats 1 --compile-mode default)
    run=(--num-prompts 4 --generation-steps 2 --resolution 64 --steps 2 --batch-size 1 --mixed-precision no)
    quality=(--num-prompts 2 --resolution 64 --batch-size 2)
    notebooks=(solutions/01_forward_process.ipynb -n 0)  # the stage's command on the shortest one
    limits=(environment 60 build 300 stream 400 stream-float32 120 rehearsal 300 train 300 recipe 10 quality 300
            notebooks 300)
else
    clip=laion/CLIP-ViT-g-14-laion2B-s12B-b42K
    # two of the five options' rows: each row is a fresh process that loads SD 2.1 (about 25 s on an H200)
    rehearsal=(--teacher stabilityai/stable-diffusion-2-1-base --resolution 512 --batch-size 4 --steps 2 --rounds 1
               --num-frames 20 --options none "+ TAESD")
    stream=(--resolution 512 --dtype float16 --num-frames 20 --repeats 1 --compile-mode reduce-overhead)
    run=(--num-prompts 32 --generation-steps 25 --resolution 512 --steps 20 --batch-size 4 --mixed-precision fp16)
    quality=(--num-prompts 50 --batch-size 8)
    notebooks=(solutions -n 8 --maxprocesses 8)  # one worker per notebook, all on the one GPU
    limits=(environment 15 build 100 stream 120 stream-float32 25 rehearsal 80 train 80 recipe 10 quality 45
            notebooks 110)
fi
declare -A limit
for ((i = 0; i < ${#limits[@]}; i += 2)); do limit[${limits[i]}]=${limits[i + 1]}; done

stage environment "${limit[environment]}" "$python" -c "import sys, torch, diffusers, transformers
print(sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__,
      'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')"
stage build "${limit[build]}" "$python" -m addlib.course.rehearsal --out "$models" \
    --models stabilityai/stable-diffusion-2-1-base stabilityai/sd-turbo nota-ai/bk-sdm-tiny facebook/dinov2-small \
    madebyollin/taesd "$clip"
folder() { echo "$models/${1/\//--}"; }
stage stream "${limit[stream]}" "$python" -m addlib.bench stream --model "$(folder stabilityai/sd-turbo)" \
    --tiny-vae "$(folder madebyollin/taesd)" --prompt "a red ball rolling on a wooden floor" "${stream[@]}" --stages
stage stream-float32 "${limit[stream-float32]}" "$python" -m addlib.bench stream \
    --model "$(folder stabilityai/sd-turbo)" --tiny-vae "" --prompt "a red ball rolling on a wooden floor" \
    "${stream[@]:0:2}" --dtype float32 --num-frames 4 --repeats 1 --stages
stage rehearsal "${limit[rehearsal]}" "$python" -m addlib.bench rehearsal --out "$models" "${rehearsal[@]}"
stage train "${limit[train]}" "$python" -m addlib.train_add --preset stable-diffusion \
    --teacher "$(folder nota-ai/bk-sdm-tiny)" --feature-network "$(folder facebook/dinov2-small)" \
    --tiny-vae "$(folder madebyollin/taesd)" --dataset teacher --lora-rank 8 --gradient-checkpointing \
    --out "$work/student" --run-dir "$work/run" "${run[@]}"
stage recipe "${limit[recipe]}" "$python" -c "import json; r = json.load(open('$work/student/recipe.json'))
print(r['config']['steps'], 'steps in', r['minutes'], 'minutes (generation and loading excluded), peak GPU memory',
      r.get('peak_gpu_memory_gib', '-'), 'GiB')"
stage quality "${limit[quality]}" "$python" -m addlib.bench quality --teacher "$(folder nota-ai/bk-sdm-tiny)" \
    --student "$work/student" --reference "$(ls -td runs/generated/*/ | head -n 1)" --clip-model "$(folder "$clip")" \
    "${quality[@]}"
# pyproject.toml's addopts run them under nbval, --nbval-lax: only the cells marked # NBVAL_CHECK_OUTPUT must
# reproduce their stored output, and any cell that raises (a tensor on the CPU meeting a model on the GPU) fails.
# Notebook 06 finds no hub here and rehearses on the models of the build stage.
stage notebooks "${limit[notebooks]}" "$python" -m pytest "${notebooks[@]}"
