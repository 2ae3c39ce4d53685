"""Section 2, correctness: forward passes, tiling, self-ensemble and a training step against float64."""

from __future__ import annotations

import copy
import math

from benchmarks.gpu.common import autocast, model_name, precisions, rel_err, tf32
from benchmarks.gpu.context import Run, free_memory
from benchmarks.gpu.data import synth_image
from benchmarks.gpu.report import MEASURED, Section


def section_correctness(run: Run, sec: Section) -> None:
    import torch

    from ntire.models.build import build_model

    sec.notes.append("relative error = ||out - ref|| / ||ref - mean(ref)|| against float64 on the CPU (the "
                     "mean shifts run in fp32 by design, in the reference too); max |err| on the 0-255 scale")
    side = run.sizes.ref_side
    for preset, scales in (("edsr-baseline", (2,)), ("edsr", (2,)), ("mdsr", (2, 3, 4))):
        config = run.model_config(preset, scales)
        torch.manual_seed(0)
        model = build_model(config).eval()
        reference = copy.deepcopy(model).double()
        x = torch.randint(0, 256, (1, 3, side, side), generator=torch.Generator().manual_seed(1)).float()
        model = model.to(run.device)
        for scale in scales:
            with torch.no_grad():
                ref = reference(x.double(), scale)
                for label, use_tf32, bf16, limit, _ in precisions(run):
                    with tf32(use_tf32), autocast(run, bf16):
                        y = model(x.to(run.device), scale).float()
                    err = rel_err(y, ref)
                    sec.check(f"{model_name(preset, config)} x{scale} forward {side}x{side}", err <= limit,
                              precision=label, rel_err=err, max_abs_err=float((y.double().cpu() - ref).abs().max()),
                              limit=limit, figure=MEASURED)
        del model, reference
        free_memory(run)
    _check_tiling(run, sec)
    _check_self_ensemble(run, sec)
    _check_training_step(run, sec)


def _check_tiling(run: Run, sec: Section) -> None:
    import numpy as np
    import torch

    from ntire.images import image_to_tensor
    from ntire.inference import upscale_image, upscale_tensor
    from ntire.models.build import build_model, receptive_field_radius
    from ntire.tiles import tile_layout

    config = run.model_config("edsr", (2,))
    torch.manual_seed(0)
    model = build_model(config).eval().to(run.device)
    h, w = run.sizes.tile_image
    image = synth_image(3, h, w)
    tiles, _, _ = tile_layout(h, w, run.sizes.tile, receptive_field_radius(config))
    with tf32(False):
        whole = upscale_image(model, config, image, scale=2, device=run.device)
        tiled = upscale_image(model, config, image, scale=2, tile=run.sizes.tile, device=run.device)
        x = image_to_tensor(image).to(run.device)
        whole_f = upscale_tensor(model, x, scale=2)
        tiled_f = upscale_tensor(model, x, scale=2, tile=run.sizes.tile, config=config)
    diff = np.abs(whole.astype(np.int16) - tiled.astype(np.int16))
    float_diff = float((whole_f - tiled_f).abs().max())
    sec.check(f"{model_name('edsr', config)} x2 tiled == whole ({w}x{h} LR, tile {run.sizes.tile}, {tiles} tiles, "
              "fp32 TF32 off)",
              tiles > 1 and int(diff.max()) <= 1 and float_diff <= 5e-3,
              max_abs_err=float_diff, uint8_max_diff=int(diff.max()), uint8_pixels_differing=int((diff > 0).sum()),
              bitwise_equal=bool(torch.equal(whole_f, tiled_f)), limit=5e-3, figure=MEASURED,
              note="float output within 5e-3 and 8-bit output within 1 (a value may round the other way)")
    del model
    free_memory(run)


def _check_self_ensemble(run: Run, sec: Section) -> None:
    import numpy as np
    import torch

    from ntire.images import image_to_tensor
    from ntire.inference import upscale_image, upscale_tensor
    from ntire.models.build import build_model

    config = run.model_config("edsr-baseline", (2,))
    torch.manual_seed(0)
    cpu_model = build_model(config).eval()
    dev_model = copy.deepcopy(cpu_model).to(run.device)
    h, w = run.sizes.ensemble_image
    image = synth_image(4, h, w)
    x = image_to_tensor(image)
    with tf32(False):
        on_cpu = upscale_image(cpu_model, config, image, scale=2, self_ensemble=True, device="cpu")
        on_dev = upscale_image(dev_model, config, image, scale=2, self_ensemble=True, device=run.device)
        float_diff = float((upscale_tensor(cpu_model, x, scale=2, self_ensemble=True)
                            - upscale_tensor(dev_model, x.to(run.device), scale=2, self_ensemble=True).cpu())
                           .abs().max())
    diff = np.abs(on_cpu.astype(np.int16) - on_dev.astype(np.int16))
    sec.check(f"{model_name('edsr-baseline', config)} x2 x8 self-ensemble {run.device.type} == cpu ({w}x{h} LR, "
              "fp32 TF32 off)",
              int(diff.max()) <= 1 and float_diff <= 1e-2, max_abs_err=float_diff, uint8_max_diff=int(diff.max()),
              uint8_pixels_differing=int((diff > 0).sum()), limit=1e-2, figure=MEASURED,
              note="equal within rounding: float within 1e-2, 8-bit within 1")
    del dev_model
    free_memory(run)


def _check_training_step(run: Run, sec: Section) -> None:
    import torch
    import torch.nn.functional as F

    from ntire.models.build import build_model

    b, p = run.sizes.grad_batch, run.sizes.grad_patch
    for preset, scale, scales in (("edsr-baseline", 2, (2,)), ("edsr", 2, (2,)), ("mdsr", 3, (2, 3, 4))):
        config = run.model_config(preset, scales)
        torch.manual_seed(0)
        model = build_model(config)
        reference = copy.deepcopy(model).double()
        g = torch.Generator().manual_seed(2)
        lr = torch.randint(0, 256, (b, 3, p, p), generator=g).float()
        hr = torch.randint(0, 256, (b, 3, p * scale, p * scale), generator=g).float()
        ref_loss = F.l1_loss(reference(lr.double(), scale), hr.double())
        ref_loss.backward()
        ref_grads = {n: q.grad for n, q in reference.named_parameters()}
        model = model.to(run.device)
        for label, use_tf32, bf16, _, limit in precisions(run):
            model.zero_grad(set_to_none=True)
            with tf32(use_tf32):
                with autocast(run, bf16):
                    sr = model(lr.to(run.device), scale)
                loss = F.l1_loss(sr.float(), hr.to(run.device))
                loss.backward()
            grads = {n: q.grad for n, q in model.named_parameters()}
            same_none = all((grads[n] is None) == (ref_grads[n] is None) for n in ref_grads)
            num = den = 0.0
            worst = 0.0
            for n, ref_g in ref_grads.items():
                if ref_g is None or grads[n] is None:
                    continue
                d = float((grads[n].double().cpu() - ref_g).norm()) ** 2
                r = float(ref_g.norm()) ** 2
                num, den = num + d, den + r
                if r > 0:
                    worst = max(worst, math.sqrt(d / r))
            grad_err = math.sqrt(num / den) if den else 0.0
            loss_err = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
            sec.check(f"{model_name(preset, config)} x{scale} training step (batch {b}, {p}x{p}) vs float64 cpu",
                      same_none and grad_err <= limit and loss_err <= limit, precision=label,
                      loss_rel_err=loss_err, rel_err=grad_err, worst_param_rel_err=worst, limit=limit,
                      figure=MEASURED, note="rel_err: all gradients together" +
                      ("" if same_none else "; the parameters without a gradient differ"))
        del model, reference
        free_memory(run)

