"""addlib: the small library behind the course on Adversarial Diffusion Distillation and streaming inference.

One module per idea, in the order the notebooks meet them; import what you need from its module, e.g.
``from addlib.forward_process import add_noise``.

The ideas
    schedules        noise schedules: DDPM's betas, alphas_cumprod, zero terminal SNR (notebook 01)
    forward_process  q(x_t | x_0) and what a denoiser predicts: epsilon, x0, v (01)
    shapes           the captioned-shapes world every miniature model trains and is measured on (01)
    miniature        the miniature Stable Diffusion: diffusers' architecture, small enough for a CPU (02)
    pipeline         the parts every path shares: prompts to embeddings, images to latents and back, one denoise (02)
    sampling         DDIM, DDPM and ADD's sampler, classifier-free guidance, written out (02)
    distillation     ADD's score-distillation loss, eq. 5 (03)
    discriminator    ADD's projected discriminator, hinge loss and R1 (04)
    train_add        the ADD trainer, miniature or hub Stable Diffusion, one GPU or several (05, 06)
    lora             LoRA on a UNet's attention projections, merged back for export: ADD on a small card (06)
    generate         training images the teacher generates from prompts, as LADD trains (06)
    stream           StreamDiffusion's real-time img2img and txt2img (07)
    latent_discriminator  LADD's discriminator: heads on the teacher's features of re-noised latents (08)
    probe            linear probes: what a frozen network's features show (08)

Data, models and measurement
    loading          the shipped models' paths; pipelines, tiny VAEs and hub ids loaded with one-line errors
    datasets         your own training data: image-caption folders, Hugging Face datasets, video frames
    metrics          prompt accuracy and shapes-FID on the miniature
    evaluation       CLIP score, FID and FD_CLIP at real scale
    preference       the paper's user study in miniature: two-alternative choices, win rates, an automatic judge (05)
    evaluators       the attribute classifier and TinyViT that measure the miniature and feed its discriminator
    rehearsal        the hub models' architectures from their published configs, with random weights
    timing           frames per second, and the compute bound a stream approaches (bench, notebook 07)
    bench            every speed and quality table of docs/benchmarks.md: ``python -m addlib.bench ...``; the
                     course's targets in bench.tables, a module per kind of measurement (quality, discriminators,
                     streaming, real_scale)

Training the shipped models (each records its command in data/<model>/recipe.json)
    train_teacher, train_tiny_vae, train_evaluators
    runs             what every trainer shares: progress, checkpoints, NaN stops, lr schedule, seeds, recipe
    checkpoints      checkpoints in safetensors (no pickle) for exact resumes; the trainers' command lines

The course's machinery
    checks           the exercises' checkers, one module per notebook, which say precisely what is wrong
    exercises        learner notebooks made from the solutions, and the README's notebook table
    plotting         the notebooks' figure helpers
    errors           the one-line errors every entry point shares
"""

__version__ = "0.1.0"
