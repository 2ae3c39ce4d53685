"""What inference precision costs in PSNR: bf16 and TF32 against exact fp32, on real photographs.

    .venv/bin/python benchmarks/precision.py [--checkpoint runs/demo/model] [--scale 2] [--device cuda]

A trained model (default `make demo`'s EDSR-baseline x2; any checkpoint `ntire upscale` takes)
super-resolves the bicubic LR (MATLAB-exact, `ntire.data.degrade`) of the 7 scikit-image photos
that `ntire data sample` keeps out of training (its valid, test and benchmark photos: astronaut,
chelsea, camera, coins, moon, grass, gravel), whole, at each precision of `ntire submit
--precision`: fp32 (TF32 off: the reference), tf32 (CUDA only: TF32 does not exist on a CPU, so
the row is skipped there) and bf16 (autocast). Per precision it prints the share of 8-bit output
values that differ from fp32's (mean and worst photo) and the PSNR change against the HR photo
(benchmark protocol: Y channel, `scale` border pixels shaved; mean, worst photo and which). Random
weights would not do: the cost of rounding depends on what the network computes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "camera", "coins", "moon", "grass", "gravel")
"""scikit-image's photos that the sample dataset never trains on."""


def load_photo(name: str):
    import numpy as np
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def measure(checkpoint: Path, scale: int, device: str, self_ensemble: bool = False) -> list[dict]:
    """One dict per (precision, photo): PSNR, PSNR change and share of changed values vs fp32."""
    import numpy as np
    import torch

    from ntire.data.degrade import bicubic_downscale, crop_to_multiple
    from ntire.inference import upscale_image
    from ntire.metrics import psnr
    from ntire.models.checkpoint import load_model

    model, config = load_model(checkpoint, map_location="cpu")
    cuda = torch.device(device).type == "cuda"
    precisions = ["fp32", "tf32", "bf16"] if cuda else ["fp32", "bf16"]
    rows = []
    for name in PHOTOS:
        hr = crop_to_multiple(load_photo(name), scale)
        lr = bicubic_downscale(hr, scale)
        outputs = {}
        for precision in precisions:
            start = time.perf_counter()
            outputs[precision] = upscale_image(model, config, lr, scale=scale, tile=0, device=device,
                                               self_ensemble=self_ensemble, precision=precision,
                                               channels_last=cuda)
            seconds = time.perf_counter() - start
            value = psnr(outputs[precision], hr, scale=scale, protocol="benchmark")
            if precision == "fp32":
                reference = value
            rows.append({
                "photo": name, "precision": precision, "psnr": value, "delta_db": value - reference,
                "changed": float(np.mean(outputs[precision] != outputs["fp32"])), "seconds": seconds,
            })
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per precision: mean and worst PSNR change, mean and largest share of changed values."""
    out = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        mine = [r for r in rows if r["precision"] == precision]
        worst = min(mine, key=lambda r: r["delta_db"])
        out.append({
            "precision": precision, "photos": len(mine),
            "delta_mean": sum(r["delta_db"] for r in mine) / len(mine),
            "delta_worst": worst["delta_db"], "worst_photo": worst["photo"],
            "changed_mean": sum(r["changed"] for r in mine) / len(mine),
            "changed_max": max(r["changed"] for r in mine),
            "seconds": sum(r["seconds"] for r in mine),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/model"),
                        help="a trained model (default runs/demo/model, made by `make demo`)")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--self-ensemble", action="store_true", help="with the x8 ensemble (8x the time)")
    args = parser.parse_args(argv)

    import torch

    from ntire.submission.manifest import checkpoint_exists

    if not checkpoint_exists(args.checkpoint):
        print(f"{args.checkpoint}: no trained model there; make one with `make demo` or give --checkpoint",
              file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"precision vs PSNR: {args.checkpoint} x{args.scale}{' +ensemble' if args.self_ensemble else ''} on "
          f"{where}, {len(PHOTOS)} scikit-image photos, benchmark protocol (Y, shave {args.scale}); "
          f"reference fp32 with TF32 off")
    if not device.startswith("cuda"):
        print("tf32: not measured: TF32 is a mode of NVIDIA tensor cores and does not exist on a CPU")
    rows = measure(args.checkpoint, args.scale, device, args.self_ensemble)
    for r in rows:
        print(f"  {r['photo']:<10} {r['precision']:<5} PSNR {r['psnr']:7.3f} dB  {r['delta_db']:+.4f} dB  "
              f"{100 * r['changed']:5.2f}% of values changed  {r['seconds']:.1f} s")
    print("\n| precision | photos | PSNR change, mean | worst (photo) | 8-bit values changed, mean | max |")
    print("|---|---|---|---|---|---|")
    for s in summarize(rows):
        print(f"| {s['precision']} | {s['photos']} | {s['delta_mean']:+.4f} dB | {s['delta_worst']:+.4f} dB "
              f"({s['worst_photo']}) | {100 * s['changed_mean']:.2f}% | {100 * s['changed_max']:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
