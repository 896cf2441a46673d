"""The stream class computes what the naive per-frame pipeline computes, Stream Batch what the same steps one
after another compute, and its options (CFG types, frame buffers, prompt changes, filter, sizes) hold."""

import numpy as np
import pytest
import torch

from addlib.bench.timing import max_difference
from addlib.datasets import image_sequence
from addlib.loading import STUDENT_DIR, load_pipeline, load_tiny_vae
from addlib.shapes import moving_shapes
from addlib.stream import SimilarityFilter, StreamDiffusion, diffusers_img2img


@pytest.fixture(scope="module")
def student():
    return load_pipeline(STUDENT_DIR, device="cpu")


@pytest.fixture(scope="module")
def student64():
    """In float64, so that streams batching the UNet differently must agree to roundoff (about 1e-13). In float32
    they differ by up to 3e-5 once self-CFG amplifies roundoff; aligned one call off they differ by about 2."""
    return load_pipeline(STUDENT_DIR, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def clip():
    frames, _ = moving_shapes(8, index=3, period=8)
    return frames


def run(stream, frames, prompt="a blue triangle"):
    stream.prepare(prompt)
    return [stream(frame) for frame in frames]


@pytest.mark.parametrize("t_index_list", [[2], [1, 2, 3]])
def test_stream_equals_the_diffusers_img2img_pipeline_called_per_frame(student, clip, t_index_list):
    with_batch = StreamDiffusion(student, t_index_list, seed=5)
    naive = diffusers_img2img(student, "a blue triangle", with_batch.timesteps, seed=5)
    reference = [naive(frame) for frame in clip]
    assert max_difference(run(StreamDiffusion(student, t_index_list, use_denoising_batch=False, seed=5), clip),
                          reference, 0) < 1e-4
    assert max_difference(run(with_batch, clip), reference, with_batch.latency) < 1e-4


@pytest.mark.parametrize("cfg_type, guidance_scale, t_index_list", [
    ("none", 1.0, [1, 2, 3]), ("full", 2.0, [0, 2, 3]), ("self", 1.5, [1, 2, 3]), ("initialize", 1.5, [1, 3])])
def test_stream_batch_equals_the_same_steps_one_after_another(student64, clip, cfg_type, guidance_scale,
                                                              t_index_list):
    streams = [StreamDiffusion(student64, t_index_list, use_denoising_batch=batch, cfg_type=cfg_type,
                               guidance_scale=guidance_scale) for batch in (True, False)]
    assert streams[0].latency == len(t_index_list) - 1 and streams[1].latency == 0
    assert max_difference(run(streams[0], clip), run(streams[1], clip), streams[0].latency) < 1e-10


def test_a_compiled_stream_computes_what_the_eager_one_does(student, clip):
    """torch.compile (inductor's C++ kernels on a CPU) fuses and reorders float arithmetic: equal within float32
    tolerance, not bit for bit. Stream Batch and the tiny VAE, so that UNet, encoder and decoder are all compiled."""
    tiny = load_tiny_vae(device="cpu")
    streams = [StreamDiffusion(student, [1, 2, 3], vae=tiny, compile_mode=mode) for mode in (None, "default")]
    assert max_difference(run(streams[1], clip[:4]), run(streams[0], clip[:4])) < 1e-4


def test_guidance_changes_the_output(student, clip):
    plain = run(StreamDiffusion(student, [1, 2]), clip[:2])
    for cfg_type in ("full", "self", "initialize"):
        guided = run(StreamDiffusion(student, [1, 2], cfg_type=cfg_type, guidance_scale=2.0), clip[:2])
        assert (guided[1] - plain[1]).abs().max() > 1e-2, cfg_type


def test_frame_buffer_moves_frames_in_blocks(student64):
    frames, _ = moving_shapes(12, index=4, period=12)
    pairs = frames.view(6, 2, *frames.shape[1:])
    streams = [StreamDiffusion(student64, [1, 2, 3], frame_buffer_size=2, use_denoising_batch=batch, cfg_type="self",
                               guidance_scale=1.5) for batch in (True, False)]
    assert streams[0].latency == 4 and streams[0].unet_batch_size == 6
    outputs = [run(stream, pairs) for stream in streams]
    assert outputs[0][0].shape == (2, 3, 32, 32)
    assert max_difference(outputs[0], outputs[1], 2) < 1e-10  # two calls late: (n - 1) * F = 4 frames


@pytest.mark.parametrize("cfg_type", ["none", "full", "self", "initialize"])
def test_a_prompt_change_mid_stream_reaches_every_slot(student, clip, cfg_type):
    """After n - 1 frames under the new prompt, the stream is the one that had it from the start."""
    changed = StreamDiffusion(student, [1, 2, 3], cfg_type=cfg_type, guidance_scale=2.0)
    changed.prepare("a red circle")
    before = [changed(frame) for frame in clip[:4]]
    changed.update_prompt("a green square", "a red circle")
    after = [changed(frame) for frame in clip[4:]]
    fresh = StreamDiffusion(student, [1, 2, 3], cfg_type=cfg_type, guidance_scale=2.0)
    fresh.prepare("a green square", "a red circle")
    reference = [fresh(frame) for frame in clip]
    assert all(torch.isfinite(output).all() for output in before + after)
    for k in range(4 + changed.latency, len(clip)):
        torch.testing.assert_close(after[k - 4], reference[k], atol=1e-5, rtol=0)


def test_warmup_fills_the_buffer_so_the_first_output_is_a_real_frame(student, clip):
    sequential = StreamDiffusion(student, [1, 2, 3], use_denoising_batch=False)
    sequential.prepare("a blue triangle")
    expected = sequential(clip[0])
    cold = StreamDiffusion(student, [1, 2, 3])
    cold.prepare("a blue triangle")
    warm = StreamDiffusion(student, [1, 2, 3])
    warm.prepare("a blue triangle")
    warm.warmup(clip[0])
    torch.testing.assert_close(warm(clip[0]), expected, atol=1e-5, rtol=0)
    assert (cold(clip[0]) - expected).abs().max() > 0.1  # the decoding of an empty buffer (#65's brown frames)


def test_txt2img_from_the_first_timestep(student):
    stream = StreamDiffusion(student, [0], frame_buffer_size=2, seed=3)
    stream.prepare("a red circle")
    first, second = stream.txt2img(), stream.txt2img()
    assert first.shape == (2, 3, 32, 32) and (first - second).abs().max() > 0.1  # fresh noise each call
    again = StreamDiffusion(student, [0], frame_buffer_size=2, seed=3)
    again.prepare("a red circle")
    torch.testing.assert_close(again.txt2img(), first)  # the seed fixes it


def test_any_size_the_vae_allows_and_the_tiny_vae(student):
    stream = StreamDiffusion(student, [2], height=24, width=40)
    stream.prepare("a red circle")
    assert stream(torch.zeros(3, 24, 40)).shape == (1, 3, 24, 40)
    tiny = StreamDiffusion(student, [2], vae=load_tiny_vae(device="cpu"))
    tiny.prepare("a red circle")
    output = tiny(torch.zeros(3, 32, 32))
    assert output.shape == (1, 3, 32, 32) and torch.isfinite(output).all()


def test_similarity_filter_probability_and_limit():
    gate = SimilarityFilter(threshold=0.5, max_skip_frame=3, seed=0)
    frame = torch.ones(2, 2, 2)
    assert gate.skip_probability(frame) == 0.0  # nothing to compare with yet
    assert gate(frame) is False
    one_flipped = frame.clone()
    one_flipped[0, 0, 0] = -1  # cos (7 - 1) / 8 = 0.75 with the reference
    assert gate.skip_probability(one_flipped) == pytest.approx((0.75 - 0.5) / (1 - 0.5))
    assert gate.skip_probability(-frame) == 0.0
    assert [gate(frame) for _ in range(5)] == [True, True, True, False, True]  # at most 3 skips in a row


def test_stream_filter_repeats_the_last_output_and_counts_skips(student):
    scene_a, scene_b = (moving_shapes(1, index=index)[0] for index in (3, 4))  # other shapes and colours
    stream = StreamDiffusion(student, [2])
    stream.enable_similarity_filter(threshold=0.98, max_skip_frame=10)
    stream.prepare("a blue triangle")
    outputs = [stream(frame) for frame in torch.cat([scene_a.expand(5, -1, -1, -1), scene_b.expand(5, -1, -1, -1)])]
    assert stream.skipped_frames == 8  # an exact repeat has cos 1: skipped for sure
    assert all(outputs[k] is outputs[0] for k in range(5)) and all(outputs[k] is outputs[5] for k in range(5, 10))
    assert (outputs[5] - outputs[0]).abs().max() > 0.1


def test_bad_input_gets_a_clear_error(student):
    for t_index_list in ([], [3, 1], [1, 1], [4], [-1]):
        with pytest.raises(ValueError, match="t_index_list must be"):
            StreamDiffusion(student, t_index_list)
    with pytest.raises(ValueError, match="unknown compile_mode 'fast'; choose one of default, reduce-overhead"):
        StreamDiffusion(student, [1], compile_mode="fast")
    with pytest.raises(ValueError, match="unknown cfg_type 'double'"):
        StreamDiffusion(student, [1], cfg_type="double")
    with pytest.raises(ValueError, match="divides by alpha_t"):
        StreamDiffusion(student, [0, 2], cfg_type="self", guidance_scale=1.5)
    with pytest.raises(ValueError, match="nearest valid height is 32"):
        StreamDiffusion(student, [1], height=30)
    with pytest.raises(ValueError, match="height 0 is not a positive multiple"):  # not taken for "the default"
        StreamDiffusion(student, [1], height=0)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer of at least 1.*got 0"):
        StreamDiffusion(student, [0], num_inference_steps=0)
    for guidance in (0.5, float("nan")):
        with pytest.raises(ValueError, match=f"guidance_scale must be a finite number of at least 1 with cfg_type "
                                             f"'full'.*got {guidance}"):
            StreamDiffusion(student, [1], cfg_type="full", guidance_scale=guidance)
    with pytest.raises(ValueError, match="delta, residual CFG's weight on the virtual negative, must be .* got -1"):
        StreamDiffusion(student, [1], cfg_type="self", guidance_scale=1.5, delta=-1.0)
    stream = StreamDiffusion(student, [1])
    with pytest.raises(RuntimeError, match=r"call prepare\(prompt\)"):
        stream(torch.zeros(3, 32, 32))
    stream.prepare("a red circle")
    for frame in (torch.zeros(3, 64, 64), torch.zeros(4, 32, 32), torch.zeros(2, 3, 32, 32)):
        with pytest.raises(ValueError, match=r"frames must have shape \(1, 3, 32, 32\)"):
            stream(frame)
    bad_frames = [
        (np.zeros((32, 32, 3), dtype=np.uint8), TypeError, r"frames must be a torch.Tensor, got numpy.ndarray"),
        (torch.zeros(3, 32, 32, dtype=torch.uint8), ValueError, r"floating point in \[-1, 1\], got torch.uint8"),
        (torch.full((3, 32, 32), 255.0), ValueError, r"must lie in \[-1, 1\], got values from 255 to 255; for "
                                                     r"0-255 values use images / 127.5 - 1"),
        (torch.full((3, 32, 32), float("nan")), ValueError, "frames hold NaN or infinite values"),
    ]
    for frame, kind, message in bad_frames:
        with pytest.raises(kind, match=message):
            stream(frame)
    with pytest.raises(TypeError, match=r"t_index_list must be a list of timestep indices such as \[2\]"):
        StreamDiffusion(student, 2)
    with pytest.raises(ValueError, match="unknown word"):
        stream.update_prompt("a red dodecahedron")
    assert stream(torch.zeros(3, 32, 32)).shape == (1, 3, 32, 32)  # the stream goes on with its prompt


def test_moving_shapes_holds_positions():
    frames, caption = moving_shapes(30, seed=1, index=2, hold=10)
    changed = (frames[1:] - frames[:-1]).flatten(1).abs().amax(1) > 0
    assert changed.nonzero().flatten().tolist() == [9, 19]  # frames 10 and 20 move
    assert "at the" not in caption and "in the center" not in caption
    moving, _ = moving_shapes(30, seed=1, index=2)
    assert ((moving[1:] - moving[:-1]).flatten(1).abs().amax(1) > 0).all()
    torch.testing.assert_close(moving[0], frames[0])
    with pytest.raises(ValueError, match="period and hold must be positive"):
        moving_shapes(3, hold=0)


def test_image_sequence_reads_a_folder_in_name_order(tmp_path):
    from PIL import Image

    for name, value in (("b.png", 255), ("a.png", 0), ("notes.txt", None)):
        if value is None:
            (tmp_path / name).write_text("not an image")
        else:
            Image.new("RGB", (48, 32), (value, value, value)).save(tmp_path / name)
    frames = image_sequence(tmp_path, 16)
    assert frames.shape == (2, 3, 16, 16)
    assert frames[0].max() == -1 and frames[1].min() == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        image_sequence(tmp_path / "empty", 16)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        image_sequence(tmp_path / "missing", 16)
    (tmp_path / "c.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match=r"c.png is not an image Pillow can read"):
        image_sequence(tmp_path, 16)
