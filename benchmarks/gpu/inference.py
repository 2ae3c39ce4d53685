"""Section 5, inference: whole, tiled and ensemble EDSR x2/x3/x4, and the six submissions projected."""

from __future__ import annotations

import time

from benchmarks.gpu.common import fp32_name
from benchmarks.gpu.context import Run, free_memory
from benchmarks.gpu.data import synth_image
from benchmarks.gpu.report import MEASURED, PROJECTED, Section


def section_inference(run: Run, sec: Section) -> None:
    import torch

    from ntire.images import read_image, write_png
    from ntire.inference import upscale_image
    from ntire.models.build import build_model, receptive_field_radius
    from ntire.tiles import tile_layout

    s = run.sizes
    hr_h, hr_w = s.infer_hr
    sec.notes.append(f"EDSR (random weights, {fp32_name(run)}) on the LR "
                     f"of a {hr_w}x{hr_h} image; tiled = tiles of {s.infer_tile} LR pixels, 4 per forward pass (the "
                     f"submission manifest's defaults are 512 and 4); ensemble = x8 self-ensemble inside each "
                     f"tile, as submissions run it. {s.infer_reps} timed call(s) after one warm-up")
    per_image: dict[tuple[int, str], float] = {}
    png: dict[int, float] = {}
    for scale in (2, 3, 4):
        config = run.model_config("edsr", (scale,))
        torch.manual_seed(0)
        model = build_model(config).eval().to(run.device)
        h, w = hr_h // scale, hr_w // scale
        image = synth_image(10 + scale, h, w)
        tiles, win_h, win_w = tile_layout(h, w, s.infer_tile, receptive_field_radius(config))
        tile_compute = tiles * win_h * win_w / (h * w)
        outputs = {}
        for mode, tile, ensemble in (("whole", None, False), (f"tiled {s.infer_tile}", s.infer_tile, False),
                                     (f"tiled {s.infer_tile} + x8 ensemble", s.infer_tile, True)):
            run.reset_peak()
            outputs[mode] = upscale_image(model, config, image, scale=scale, tile=tile, self_ensemble=ensemble,
                                          device=run.device, max_batch=4)
            start = run.clock.mark()
            for _ in range(s.infer_reps):
                upscale_image(model, config, image, scale=scale, tile=tile, self_ensemble=ensemble,
                              device=run.device, max_batch=4)
            ms = run.clock.ms(start, run.clock.mark()) / s.infer_reps
            per_image[scale, mode.split()[0] + ("+se" if ensemble else "")] = ms / 1e3
            sec.row(item=f"x{scale} {mode}", lr=f"{w}x{h}", tiles=tiles if tile else 1,
                    compute_vs_whole=tile_compute if tile else 1.0, ms_per_image=ms,
                    mp_per_s=h * w * scale * scale / 1e6 / (ms / 1e3), peak_gib=run.peak_gib(), figure=MEASURED)
        diff = int(abs(outputs["whole"].astype(int) - outputs[f"tiled {s.infer_tile}"].astype(int)).max())
        sec.row(item=f"x{scale} tiled vs whole, 8-bit max difference ({'TF32 convs' if run.cuda else 'fp32'})",
                value=diff, figure=MEASURED, note="informational: the convolution algorithms (and with TF32 their "
                "rounding) differ between tile and whole-image shapes"),
        lr_path, sr_path = run.work / f"lr_x{scale}.png", run.work / f"sr_x{scale}.png"
        write_png(lr_path, image)
        start = time.perf_counter()
        read_image(lr_path)
        write_png(sr_path, outputs["whole"])
        png[scale] = time.perf_counter() - start
        sec.row(item=f"x{scale} PNG read LR + write SR (CPU)", ms_per_image=png[scale] * 1e3, figure=MEASURED,
                note="compression level 6, as `ntire submit` writes")
        del model, outputs
        free_memory(run)
        run.report.write()

    # Six submissions: bicubic x2/x3/x4 with the x8 ensemble, unknown x2/x3/x4 without; tiled as the manifest.
    images = 100
    gpu_total = io_total = 0.0
    for track, ensemble in (("bicubic", True), ("unknown", False)):
        for scale in (2, 3, 4):
            seconds = per_image[scale, "tiled+se" if ensemble else "tiled"] * images
            gpu_total += seconds
            io_total += png[scale] * images
            sec.row(item=f"submission {track} x{scale}{' (x8 ensemble)' if ensemble else ''}, {images} images",
                    seconds=seconds, figure=PROJECTED, note=f"{images} x the measured tiled time per image")
    what = "DIV2K test images" if not run.smoke else "tiny smoke images (not the DIV2K projection)"
    sec.check(f"all six submissions, {images} {what}, inference only", gpu_total < 600, seconds=gpu_total,
              minutes=gpu_total / 60, limit="600 s", figure=PROJECTED,
              note="sum of the six rows above; goal < 10 min on one GPU")
    sec.row(item="all six submissions with serial PNG read/write", seconds=gpu_total + io_total,
            minutes=(gpu_total + io_total) / 60, figure=PROJECTED,
            note="plus 100 x the measured PNG read + write per image and scale, done one after the other as "
                 "ntire.submission.predict does")
    whole_total = sum(per_image[scale, "whole"] * (8 + 1) * images for scale in (2, 3, 4))
    sec.row(item="all six submissions on whole images (manifest tile: null), inference only", seconds=whole_total,
            minutes=whole_total / 60, figure=PROJECTED,
            note="the ensemble taken as 8 x the measured whole-image time, plus 1 x for the unknown track; "
                 "needs the memory of whole images (peak_gib above)")

