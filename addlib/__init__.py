"""addlib: the small library behind the course on Adversarial Diffusion Distillation and streaming inference.

One module per idea, in the order the notebooks meet them, at the top of the package; the machinery that
measures them and builds the course sits in folders below. Import what you need from its module, e.g.
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
    add_trainer      ADD's trainer from its parts: the student, its discriminator and one training step (05)
    train_add        ADD's configuration and run, miniature or hub Stable Diffusion, one GPU or several (05, 06)
    lora             LoRA on a UNet's attention projections, merged back for export: ADD on a small card (06)
    generate         training images the teacher generates from prompts, as LADD trains (06)
    stream           StreamDiffusion's real-time img2img and txt2img (07)
    latent_discriminator  LADD's discriminator: heads on the teacher's features of re-noised latents (08)
    probe            linear probes: what a frozen network's features show (08)

Data and models
    loading          the shipped models' paths; pipelines, tiny VAEs and hub ids loaded with one-line errors
    datasets         your own training data: image-caption folders, Hugging Face datasets, video frames
    evaluators       the attribute classifier and TinyViT that measure the miniature and feed its discriminator

The machinery, in folders of their own: nothing above imports from bench or course
    utils            what every trainer and command shares: errors (one-line errors), commands (command lines,
                     configurations checked as they are built), runs (the run loop, NaN stops, seeds, recipe),
                     checkpoints (safetensors checkpoints for exact resumes)
    bench            every speed and quality table of docs/benchmarks.md: ``python -m addlib.bench ...``, the
                     course's targets in bench.tables, and what the tables are made of: metrics (prompt accuracy,
                     shapes-FID), evaluation (CLIP score, FID at real scale), preference (the user study in
                     miniature), timing (frames per second)
    course           the course's own machinery: checks (the exercises' checkers), exercises (learner notebooks
                     from the solutions), plotting, rehearsal (the hub architectures with random weights), and the
                     trainers of the shipped miniature, train_teacher, train_tiny_vae, train_evaluators
"""

__version__ = "0.1.0"
