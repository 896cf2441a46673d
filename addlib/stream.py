"""Streaming inference in the style of StreamDiffusion (Kodaira et al., 2023, "StreamDiffusion: A Pipeline-level
Solution for Real-time Interactive Generation", arXiv 2312.12491), for any diffusers Stable Diffusion pipeline.

A naive stream calls the pipeline once per frame: encode the prompt, draw noise, set up the scheduler, run each
denoising step in turn, decode. :class:`StreamDiffusion` keeps only the network calls:

- **pre-computation**: prompt embeddings, the noise of every slot and the per-timestep
  coefficients alpha_t, sigma_t are computed once in :meth:`StreamDiffusion.prepare` (the embeddings again
  only when the prompt changes, :meth:`StreamDiffusion.update_prompt`);
- **Stream Batch**: with n timesteps ``t_index_list``, one UNet call on a batch of n latents
  denoises the newest frame at the first timestep and the frames already in flight at the later ones. A frame
  leaves the pipe n - 1 calls after it entered: the stream's *latency* is (n - 1) * frame_buffer_size frames,
  and until then the buffer holds no frame (:meth:`StreamDiffusion.warmup` fills it);
- **residual classifier-free guidance**: guidance against a *virtual* negative prediction made
  from the noise already in the latent ("self"), or from one real negative UNet row per frame ("initialize"),
  instead of a second UNet pass per step ("full");
- the **stochastic similarity filter**: a frame too like the last processed one is skipped with
  probability max(0, (cos - eta) / (1 - eta)), and the previous output is shown again.

Each step of the pipe is ADD's multi-step sampler (:func:`addlib.sampling.renoise_step`), which is also what
diffusers' ``LCMScheduler`` computes: the UNet's x0, noised afresh to the next timestep, here with each slot's
fixed noise. Guidance is done in x0-space, so that full CFG stays defined at t = 999 where a zero-terminal-SNR
schedule leaves no signal (residual CFG divides by alpha_t, 0 there, and is refused at t = 999). Where
StreamDiffusion's own code breaks (its issues #65, #76, #109, #126; a CUDA-only timer), this one differs, as the
docstrings say.
"""

from __future__ import annotations

import math

import torch

from addlib.forward_process import predict_x0_and_epsilon
from addlib.loading import pipeline_class, quiet_diffusers
from addlib.pipeline import check_image_size, encode_prompts, image_size, vae_factor
from addlib.sampling import classifier_free_guidance, ddim_timesteps, guidance_batch
from addlib.utils.errors import check_images, check_integer

CFG_TYPES = ("none", "full", "self", "initialize")
# torch.compile's modes. "reduce-overhead" adds CUDA graphs on a GPU: the whole UNet call replayed as one launch,
# which is what a one-step stream at batch 1 is bound by (kernel launches, not arithmetic).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def skip_probability(frame: torch.Tensor, reference: torch.Tensor, threshold: float) -> float:
    """P(skip) = max(0, (cos - eta) / (1 - eta)): cos the cosine similarity of the two
    frames as whole vectors, eta = ``threshold``. Frames less alike than eta are never skipped."""
    cos = torch.nn.functional.cosine_similarity(frame.flatten().float(), reference.flatten().float(), dim=0, eps=1e-6)
    return max(0.0, (cos.item() - threshold) / (1 - threshold))


def stream_batch_update(x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor | None,
                        frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream Batch's shift after its one UNet call: ``(finished, buffer)``.

    ``x0`` (n F, C, h, w) holds the UNet's x0 of every row, in blocks of ``frames`` rows, the newest frames first
    at the first timestep and the oldest last. The last block is finished; every other block moves one block
    down, noised to the *next* block's timestep with that slot's fixed noise, x = alpha x0 + sigma noise
    (``alpha``, ``sigma`` (n F, 1, 1, 1) per row; ``noise`` (n F, ...) per row, or None for no noise)."""
    later = slice(frames, None)
    buffer = alpha[later] * x0[:-frames]
    if noise is not None:
        buffer = buffer + sigma[later] * noise[later]
    return x0[-frames:], buffer


class SimilarityFilter:
    """StreamDiffusion's stochastic similarity filter: skip a frame with probability

        P(skip) = max(0, (cos - eta) / (1 - eta)),

    cos the cosine similarity between the frame and the last *processed* one; after ``max_skip_frame`` skips in
    a row the next frame is processed whatever it looks like. ``seed`` fixes the coin flips. (StreamDiffusion
    never resets its skip count on a processed frame, so its limit counts skips since the last *forced* frame.)
    """

    def __init__(self, threshold: float = 0.98, max_skip_frame: int = 10, seed: int = 0):
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold eta must be in [0, 1), got {threshold}")
        if max_skip_frame < 0:
            raise ValueError(f"max_skip_frame must be at least 0, got {max_skip_frame}")
        self.threshold, self.max_skip_frame = threshold, max_skip_frame
        self.generator = torch.Generator().manual_seed(seed)
        self.reference: torch.Tensor | None = None
        self.skipped = 0

    def skip_probability(self, frame: torch.Tensor) -> float:
        return 0.0 if self.reference is None else skip_probability(frame, self.reference, self.threshold)

    def __call__(self, frame: torch.Tensor) -> bool:
        """Whether to skip ``frame``; a processed frame becomes the new reference."""
        coin = torch.rand((), generator=self.generator).item()  # drawn for every frame: a fixed coin per frame
        skip = self.skipped < self.max_skip_frame and coin < self.skip_probability(frame)
        if skip:
            self.skipped += 1
        else:
            self.skipped, self.reference = 0, frame.detach().clone()
        return skip


class StreamDiffusion:
    """A stream of frames through ``pipe`` (any diffusers Stable Diffusion pipeline: the shipped student, the
    teacher, or a hub model), with StreamDiffusion's techniques switchable one by one.

    ``t_index_list`` picks the timesteps among the ``num_inference_steps`` "trailing" ones, from high to low
    noise: the ADD student's grid is its 4 student timesteps (999, 749, 499, 249; the default where the
    scheduler names ``original_inference_steps``), otherwise 50 (999, 979, ...). So [0] is one step from pure
    noise (txt2img), [2] one img2img step from t = 499, [1, 2, 3] three steps from t = 749; the first index
    sets how far the output may move from the input frame. ``frame_buffer_size`` frames go in and come out per
    call. ``vae`` replaces the pipeline's for encoding and decoding (a tiny VAE, :func:`addlib.loading.load_tiny_vae`).
    ``height`` and ``width`` may be any multiple of the VAE's factor. ``seed`` fixes every noise the stream uses.
    ``compile_mode`` compiles the UNet and the VAE with ``torch.compile`` in that mode (:data:`COMPILE_MODES`):
    the first frames pay the compilation, the later ones run faster; the outputs match eager's to float
    tolerance. StreamDiffusion's TensorRT engines go further (fused kernels, fixed shapes, fp16 throughout).
    """

    def __init__(self, pipe, t_index_list, num_inference_steps: int | None = None, frame_buffer_size: int = 1,
                 use_denoising_batch: bool = True, cfg_type: str = "none", guidance_scale: float = 1.0,
                 delta: float = 1.0, do_add_noise: bool = True, vae=None, height: int | None = None,
                 width: int | None = None, seed: int = 0, compile_mode: str | None = None):
        if cfg_type not in CFG_TYPES:
            raise ValueError(f"unknown cfg_type {cfg_type!r}; choose one of {', '.join(CFG_TYPES)}")
        if num_inference_steps is None:
            num_inference_steps = getattr(pipe.scheduler.config, "original_inference_steps", None) or 50
        check_integer("num_inference_steps", num_inference_steps, 1)  # the grid t_index_list indexes
        if cfg_type != "none" and not (math.isfinite(guidance_scale) and guidance_scale >= 1):
            raise ValueError(f"guidance_scale must be a finite number of at least 1 with cfg_type {cfg_type!r} (1 "
                             f"turns guidance off; below 1 it pulls towards the negative), got {guidance_scale}")
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta, residual CFG's weight on the virtual negative, must be a finite number of at "
                             f"least 0 (StreamDiffusion uses 0 to 1), got {delta}")
        if not isinstance(t_index_list, (list, tuple)):
            raise TypeError(f"t_index_list must be a list of timestep indices such as [2] or [1, 2, 3], got "
                            f"{t_index_list!r}")
        t_index_list = list(t_index_list)
        if (not t_index_list or any(not isinstance(i, int) or not 0 <= i < num_inference_steps for i in t_index_list)
                or t_index_list != sorted(set(t_index_list))):
            raise ValueError(f"t_index_list must be a non-empty, increasing list of distinct indices in "
                             f"[0, {num_inference_steps}) (num_inference_steps), got {t_index_list}")
        if frame_buffer_size < 1:
            raise ValueError(f"frame_buffer_size must be at least 1, got {frame_buffer_size}")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile_mode {compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}, or "
                             f"None for eager")
        self.pipe, self.vae = pipe, vae if vae is not None else pipe.vae
        self.unet, self.vae_encode, self.vae_decode = pipe.unet, self.vae.encode, self.vae.decode
        if compile_mode is not None:
            self.unet, self.vae_encode, self.vae_decode = (
                torch.compile(part, mode=compile_mode) for part in (pipe.unet, self.vae.encode, self.vae.decode))
        self.compile_mode = compile_mode
        # Looked up once: diffusers' ModelMixin.device and .dtype walk every submodule, a millisecond each.
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.factor = vae_factor(pipe.vae)
        self.height = image_size(pipe) if height is None else height
        self.width = image_size(pipe) if width is None else width
        check_image_size("height", self.height, self.factor)
        check_image_size("width", self.width, self.factor)
        self.timesteps = ddim_timesteps(num_inference_steps)[t_index_list]  # (n,), from high to low
        self.frame_buffer_size, self.use_denoising_batch = frame_buffer_size, use_denoising_batch
        self.cfg_type, self.guidance_scale, self.delta = cfg_type, guidance_scale, delta
        self.do_add_noise, self.seed = do_add_noise, seed
        alphas_cumprod = pipe.scheduler.alphas_cumprod
        if cfg_type in ("self", "initialize") and (alphas_cumprod[self.timesteps] == 0).any():
            raise ValueError(f"residual CFG ({cfg_type!r}) divides by alpha_t, which is 0 at t = 999 on a "
                             f"zero-terminal-SNR schedule; start later in t_index_list or use cfg_type 'full'")
        self.filter: SimilarityFilter | None = None
        self.prompt: str | None = None

    @property
    def latency(self) -> int:
        """Frames between a frame going in and its result coming out: (n - 1) * frame_buffer_size with Stream
        Batch (the frame waits in the buffer for the later timesteps), 0 without."""
        return (len(self.timesteps) - 1) * self.frame_buffer_size if self.use_denoising_batch else 0

    @property
    def unet_batch_size(self) -> int:
        """Rows in one UNet call: n * F with Stream Batch (F without), doubled by "full" CFG, plus F for
        "initialize"'s negative rows."""
        rows = (len(self.timesteps) if self.use_denoising_batch else 1) * self.frame_buffer_size
        if self.cfg_type == "none" or self.guidance_scale == 1:
            return rows
        return 2 * rows if self.cfg_type == "full" else rows + self.frame_buffer_size * (self.cfg_type == "initialize")

    def enable_similarity_filter(self, threshold: float = 0.98, max_skip_frame: int = 10) -> None:
        """Skip frames too like the last processed one (img2img only), showing the previous output again."""
        self.filter = SimilarityFilter(threshold, max_skip_frame, self.seed)

    @torch.no_grad()
    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        """Compute once what every frame reuses: the prompt embeddings, each slot's fixed noise, the per-row
        coefficients; and empty the buffer (:meth:`warmup` fills it). Call it once per stream, not per request:
        it resets the frames in flight (StreamDiffusion #65). To change the prompt, :meth:`update_prompt`."""
        unet, frames, n = self.pipe.unet, self.frame_buffer_size, len(self.timesteps)
        device, dtype = self.device, self.dtype
        shape = (frames, unet.config.in_channels, self.height // self.factor, self.width // self.factor)
        # Drawn in the order a diffusers img2img call seeded with `seed` draws them (the VAE posterior sample, the
        # noise of the first step, then one per later step), so the stream reproduces that call frame by frame.
        generator = torch.Generator().manual_seed(self.seed)
        self.encode_noise = torch.randn(shape, generator=generator).to(device, dtype)
        self.init_noise = torch.cat([torch.randn(shape, generator=generator) for _ in range(n)]).to(device, dtype)
        self.stock_noise = self.init_noise.clone()  # residual CFG's noise estimate, per row
        self.alphas_cumprod = self.pipe.scheduler.alphas_cumprod.to(device)
        alpha_bar = self.alphas_cumprod[self.timesteps.to(device)]
        alpha_bar = alpha_bar.repeat_interleave(frames).view(-1, 1, 1, 1)  # rows: [t_0] * F, [t_1] * F, ...
        self.alpha, self.sigma = alpha_bar.sqrt().to(dtype), (1 - alpha_bar).sqrt().to(dtype)
        self.t_rows = self.timesteps.to(device).repeat_interleave(frames)
        self.buffer = torch.zeros((n - 1) * frames, *shape[1:], device=device, dtype=dtype)
        self.noise_generator = torch.Generator().manual_seed(self.seed + 1)  # txt2img's fresh latents
        self.last_output, self.skipped_frames = None, 0
        if self.filter is not None:  # a fresh reference frame and coin sequence
            self.enable_similarity_filter(self.filter.threshold, self.filter.max_skip_frame)
        self.update_prompt(prompt, negative_prompt)

    @torch.no_grad()
    def update_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        """A new prompt mid-stream: only the embeddings change (negative ones too, for "full" and "initialize",
        whose UNet batch StreamDiffusion's update leaves without them); frames in flight finish under it."""
        if not hasattr(self, "buffer"):
            raise RuntimeError("call prepare(prompt) before update_prompt(prompt)")
        self.cond = encode_prompts(self.pipe, [prompt])  # (1, L, D)
        self.uncond = encode_prompts(self.pipe, [negative_prompt]) if self.cfg_type in ("full", "initialize") else None
        self.prompt, self.negative_prompt = prompt, negative_prompt

    def _x0_and_eps(self, x, t, embeddings):
        output = self.unet(x, t, encoder_hidden_states=embeddings).sample
        return predict_x0_and_epsilon(output, x, t, self.alphas_cumprod, self.pipe.scheduler.config.prediction_type)

    def _denoise(self, x, t, alpha, sigma, stock, newest: int):
        """x0 of every row, guided as ``cfg_type`` says; and, for residual CFG, the x0 the rows' residual noise
        implies, which the recursion needs. The first ``newest`` rows are the frame(s) that just came in.

        With eps' the residual noise, residual CFG takes x0_u = (x - delta * sigma * eps') / alpha as the
        negative prediction: no UNet pass for it, except "initialize"'s one row per new frame."""
        g, cond = self.guidance_scale, self.cond.expand(len(x), -1, -1)
        if self.cfg_type == "none" or g == 1:
            return self._x0_and_eps(x, t, cond)[0], None
        if self.cfg_type == "full":
            x0 = self._x0_and_eps(*guidance_batch(x, t, self.uncond, cond))[0]
            return classifier_free_guidance(*x0.chunk(2), g), None
        if self.cfg_type == "initialize" and newest:  # one real negative prediction for the newest frame(s)
            x0, eps = self._x0_and_eps(torch.cat([x[:newest], x]), torch.cat([t[:newest], t]),
                                       torch.cat([self.uncond.expand(newest, -1, -1), cond]))
            stock = torch.cat([eps[:newest], stock[newest:]])
            x0_cond = x0[newest:]
        else:
            x0_cond = self._x0_and_eps(x, t, cond)[0]
        x0_residual = (x - sigma * stock) / alpha
        x0_uncond = (x - sigma * self.delta * stock) / alpha
        return classifier_free_guidance(x0_uncond, x0_cond, g), x0_residual

    def _residual_noise(self, x0, x0_residual, rows: slice) -> torch.Tensor:
        """The noise estimate of the next rows: their fixed noise, moved by how far the guided x0 is from the
        residual one, x_next = alpha x0 + sigma n = alpha x0_residual + sigma (n + alpha (x0 - x0_residual) / sigma)."""
        return self.init_noise[rows] + self.alpha[rows] * (x0 - x0_residual) / self.sigma[rows]

    def _step(self, x_new: torch.Tensor) -> torch.Tensor:
        """Denoise the newest frame(s) ``x_new`` (F, C, h, w) from the first timestep; return x0 of the oldest."""
        if self.compile_mode == "reduce-overhead":  # a new frame: CUDA graphs may now reuse the last one's memory
            torch.compiler.cudagraph_mark_step_begin()
        n, frames = len(self.timesteps), self.frame_buffer_size
        if self.use_denoising_batch:
            x = torch.cat([x_new, self.buffer])  # newest first, then the frames in flight at later timesteps
            x0, x0_residual = self._denoise(x, self.t_rows, self.alpha, self.sigma, self.stock_noise, frames)
            finished, self.buffer = stream_batch_update(x0, self.alpha, self.sigma,
                                                        self.init_noise if self.do_add_noise else None, frames)
            if x0_residual is not None:  # the residual noise moves down with its block
                self.stock_noise = torch.cat([self.init_noise[:frames], self._residual_noise(
                    x0[:-frames], x0_residual[:-frames], slice(frames, None))])
            return finished
        x = x_new
        for j in range(n):  # the same steps one after another: n UNet calls per frame, no latency
            rows, following = slice(j * frames, (j + 1) * frames), slice((j + 1) * frames, (j + 2) * frames)
            stock = self.init_noise[rows] if j == 0 else self.stock_noise[rows]
            x0, x0_residual = self._denoise(x, self.t_rows[rows], self.alpha[rows], self.sigma[rows], stock,
                                            frames if j == 0 else 0)
            if j < n - 1:
                noise = self.init_noise[following] if self.do_add_noise else 0
                x = self.alpha[following] * x0 + self.sigma[following] * noise
                if x0_residual is not None:
                    self.stock_noise[following] = self._residual_noise(x0, x0_residual, following)
        return x0

    def _frames(self, image: torch.Tensor) -> torch.Tensor:
        check_images("frames", image, ndim=None)
        if image.ndim == 3:
            image = image[None]
        expected = (self.frame_buffer_size, 3, self.height, self.width)
        if tuple(image.shape) != expected:
            raise ValueError(f"frames must have shape {expected} (frame_buffer_size, RGB, height, width) in [-1, 1], "
                             f"got {tuple(image.shape)}; build the stream with height= and width= for another size")
        return image.to(self.device, self.dtype)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of ``images``: a tiny VAE's deterministic code, or a sample of the VAE's posterior with
        the stream's fixed noise (diffusers' img2img samples it too)."""
        encoded = self.vae_encode(images)
        if hasattr(encoded, "latents"):
            latents = encoded.latents
        else:
            posterior = encoded.latent_dist
            latents = posterior.mean + posterior.std * self.encode_noise[:len(images)]
        return latents * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        # clamp makes a tensor of its own: CUDA graphs reuse their output memory at the next call
        return self.vae_decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def _check_prepared(self) -> None:
        if self.prompt is None:
            raise RuntimeError("call prepare(prompt) before streaming frames")

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """img2img: the output (F, 3, H, W) in [-1, 1] for the next ``frame_buffer_size`` frames ``image``
        ((F, 3, H, W) in [-1, 1]; (3, H, W) when F = 1).

        With Stream Batch the output belongs to the frames that went in ``latency`` frames earlier. A frame the
        similarity filter skips returns the previous output at once (StreamDiffusion sleeps to keep the rate)."""
        self._check_prepared()
        frames = self._frames(image)
        if self.filter is not None and self.filter(frames):  # never true before a frame was processed
            self.skipped_frames += 1
            return self.last_output
        return self._img2img(frames)

    def _img2img(self, frames: torch.Tensor) -> torch.Tensor:
        first = slice(0, self.frame_buffer_size)
        x_new = self.alpha[first] * self.encode(frames) + self.sigma[first] * self.init_noise[first]
        self.last_output = self.decode(self._step(x_new))
        return self.last_output

    @torch.no_grad()
    def txt2img(self) -> torch.Tensor:
        """``frame_buffer_size`` new images of the prompt, each from fresh noise taken as the latent at the first
        timestep (exact for t_index_list starting at 0, t = 999; StreamDiffusion does the same everywhere)."""
        self._check_prepared()
        shape = (self.frame_buffer_size, *self.init_noise.shape[1:])
        x_new = torch.randn(shape, generator=self.noise_generator).to(self.init_noise)
        return self.decode(self._step(x_new))

    def warmup(self, image: torch.Tensor | None = None) -> None:
        """Fill the Stream Batch buffer by streaming ``image`` (img2img) or noise (txt2img) n - 1 times, so the
        first output shown is a real frame, not the decoding of an empty buffer (StreamDiffusion #65: brown
        frames). The similarity filter is bypassed: repeating a frame is the point. Without Stream Batch there is
        nothing to fill."""
        self._check_prepared()
        frames = self._frames(image) if image is not None else None
        with torch.no_grad():
            for _ in range(len(self.timesteps) - 1 if self.use_denoising_batch else 0):
                self._img2img(frames) if frames is not None else self.txt2img()


def diffusers_img2img(pipe, prompt: str, timesteps, seed: int = 0):
    """The naive stream StreamDiffusion starts from: one call of diffusers' ``StableDiffusionImg2ImgPipeline`` per
    frame, which encodes the prompt, sets up the scheduler, draws the noise, runs every step and decodes, each
    time. Returns ``frame (3, H, W) in [-1, 1] -> output (1, 3, H, W) in [-1, 1]``.

    The pipeline shares ``pipe``'s modules, steps with ``LCMScheduler`` (x0 noised afresh: ADD's sampler) through
    ``timesteps`` and draws from a generator seeded with ``seed`` at every frame, so it computes what
    ``StreamDiffusion(pipe, ..., seed=seed)`` computes with the same timesteps, no guidance and no filter."""
    from diffusers import LCMScheduler

    components = {**pipe.components, "scheduler": LCMScheduler.from_config(pipe.scheduler.config)}
    with quiet_diffusers():
        img2img = pipeline_class("StableDiffusionImg2ImgPipeline")(**components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    timesteps = [int(t) for t in timesteps]

    def run(frame: torch.Tensor) -> torch.Tensor:
        with quiet_diffusers():  # LCM warns on every call that the schedule does not start at t = 999
            images = img2img(prompt, image=(frame[None] + 1) / 2, timesteps=timesteps, strength=1.0,
                             guidance_scale=0.0, generator=torch.Generator().manual_seed(seed), output_type="pt").images
        return images * 2 - 1

    return run


def where_paths_part(pipe, frame: torch.Tensor, prompt: str, t_index_list, seed: int = 0) -> list[dict]:
    """Where the stream and diffusers' img2img loop (:func:`diffusers_img2img`) part on ``frame`` (3, H, W): each
    stage's largest value and the largest difference between the two paths. Both run once, without Stream Batch,
    with forward hooks on the modules they share: the VAE encoder's output, the input and output of each UNet
    call, the decoder's input, and the image. In float32 they agree to rounding at every stage; a stage where
    they first part by more says which computation to look at. In half precision they part by roundings:
    diffusers takes the frame and the image through [0, 1] in float32 and does the scheduler's arithmetic in
    the pipeline's dtype, the stream in float32 (docs/benchmarks.md measures both on a CPU)."""
    stream = StreamDiffusion(pipe, t_index_list, use_denoising_batch=False, height=frame.shape[-2],
                             width=frame.shape[-1], seed=seed)
    stream.prepare(prompt)
    naive = diffusers_img2img(pipe, prompt, stream.timesteps, seed=seed)

    def unet_output(output):
        return output[0] if isinstance(output, tuple) else output.sample

    def record(run) -> list[tuple[str, torch.Tensor]]:
        seen, calls = [], []
        hooks = [stream.vae.encoder.register_forward_hook(lambda m, i, o: seen.append(("VAE encoder output", o))),
                 pipe.unet.register_forward_hook(lambda m, i, o: calls.append((i[0], unet_output(o)))),
                 stream.vae.decoder.register_forward_hook(lambda m, i, o: seen.append(("decoder input", i[0])))]
        try:
            image = run(frame)
        finally:
            for hook in hooks:
                hook.remove()
        for k, (x, out) in enumerate(calls, 1):
            seen[-1:-1] = [(f"UNet input, step {k}", x), (f"UNet output, step {k}", out)]
        return seen + [("image", image)]

    with torch.no_grad():
        rows = []
        for (stage, a), (_, b) in zip(record(naive), record(stream), strict=True):
            a, b = a.float().cpu(), b.float().cpu()
            largest, difference = a.abs().max().item(), (a - b).abs().max().item()
            relative = difference / max(largest, 1e-12)
            rows.append({"stage": stage, "largest abs value": f"{largest:.3g}",
                         "largest difference": f"{difference:.1e}", "relative": f"{relative:.1e}"})
    return rows
