#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md ("Real scale on a GPU") in one run of about 8 minutes on one H100/H200,
# offline: the models are the rehearsal models (the hub architectures with random weights, addlib.rehearsal), so
# the figures are of time and memory, never of quality.
#
#   bash scripts/gpu_figures.sh [LOG_DIR]     # one log per stage in LOG_DIR (default runs/gpu/logs)
#   SMALL=1 bash scripts/gpu_figures.sh       # the same stages at toy sizes: rehearses this script on a CPU
#
# Stages: build the models; the streaming table at 512x512 in float16 (SD-Turbo, TAESD), and a short one in
# float32 (the float16 outputs differed from diffusers' own loop on random weights); ADD's memory options on
# SD 2.1-base at 512x512, batch 4; notebook 06's run at its own settings (BK-SDM-Tiny, LoRA, checkpointing,
# TAESD, fp16), shortened to 64 generated images and 30 steps; its evaluation on 50 held-out prompts with
# CLIP ViT-g/14; last, beyond the 8 minutes, the eight notebooks under nbval with the GPU as their device. Each
# stage has its own time limit, so one that fails or overruns leaves the others' figures.
# Stage times on an H200: environment 18 s, build 95 s, stream (50 frames) 102 s, rehearsal 167 s.
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
    stream=(--resolution 64 --dtype float32 --num-frames 6 --repeats 1)
    run=(--num-prompts 4 --generation-steps 2 --resolution 64 --steps 2 --batch-size 1 --mixed-precision no)
    quality=(--num-prompts 2 --resolution 64 --batch-size 2)
    notebooks=(solutions/01_forward_process.ipynb) notebooks_limit=300  # the stage's command on the shortest one
else
    clip=laion/CLIP-ViT-g-14-laion2B-s12B-b42K
    # one round: each row is a fresh process that loads SD 2.1 (about 25 s on an H200), and two did not fit
    rehearsal=(--teacher stabilityai/stable-diffusion-2-1-base --resolution 512 --batch-size 4 --steps 2 --rounds 1
               --num-frames 50)
    stream=(--resolution 512 --dtype float16 --num-frames 30 --repeats 2)
    run=(--num-prompts 64 --generation-steps 25 --resolution 512 --steps 30 --batch-size 4 --mixed-precision fp16)
    quality=(--num-prompts 50 --batch-size 8)
    notebooks=(solutions) notebooks_limit=1200  # their cells take about 20 minutes on a 2-core CPU
fi

stage environment 60 "$python" -c "import sys, torch, diffusers, transformers
print(sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__,
      'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')"
stage build 180 "$python" -m addlib.rehearsal --out "$models" --models stabilityai/stable-diffusion-2-1-base \
    stabilityai/sd-turbo nota-ai/bk-sdm-tiny facebook/dinov2-small madebyollin/taesd "$clip"
folder() { echo "$models/${1/\//--}"; }
stage stream 120 "$python" -m addlib.bench stream --model "$(folder stabilityai/sd-turbo)" \
    --tiny-vae "$(folder madebyollin/taesd)" --prompt "a red ball rolling on a wooden floor" "${stream[@]}"
stage stream-float32 90 "$python" -m addlib.bench stream --model "$(folder stabilityai/sd-turbo)" --tiny-vae "" \
    --prompt "a red ball rolling on a wooden floor" "${stream[@]}" --dtype float32 --num-frames 10 --repeats 1
stage rehearsal 300 "$python" -m addlib.bench rehearsal --out "$models" "${rehearsal[@]}"
stage train 180 "$python" -m addlib.train_add --preset stable-diffusion --teacher "$(folder nota-ai/bk-sdm-tiny)" \
    --feature-network "$(folder facebook/dinov2-small)" --tiny-vae "$(folder madebyollin/taesd)" --dataset teacher \
    --lora-rank 8 --gradient-checkpointing --out "$work/student" --run-dir "$work/run" "${run[@]}"
stage recipe 10 "$python" -c "import json; r = json.load(open('$work/student/recipe.json'))
print(r['config']['steps'], 'steps in', r['minutes'], 'minutes (generation and loading excluded), peak GPU memory',
      r.get('peak_gpu_memory_gib', '-'), 'GiB')"
stage quality 180 "$python" -m addlib.bench quality --teacher "$(folder nota-ai/bk-sdm-tiny)" \
    --student "$work/student" --reference "$(ls -td runs/generated/*/ | head -n 1)" --clip-model "$(folder "$clip")" \
    "${quality[@]}"
# pyproject.toml's addopts run them under nbval, --nbval-lax: only the cells marked # NBVAL_CHECK_OUTPUT must
# reproduce their stored output, and any cell that raises (a tensor on the CPU meeting a model on the GPU) fails.
# Notebook 06 finds no hub here and rehearses on the models of the build stage.
stage notebooks "$notebooks_limit" "$python" -m pytest "${notebooks[@]}"
