"""Section 6, submissions: all six NTIRE 2017 zips made by `ntire submit` end to end (LR PNGs in,
validated zips out) with EDSR on DIV2K-test-sized images, scaled to 100 images per zip, checked
against the old tiled NCHW path (benchmarks/submissions.py does the work)."""

from __future__ import annotations

from benchmarks.gpu.context import Run
from benchmarks.gpu.report import MEASURED, PROJECTED, Section


def section_submissions(run: Run, sec: Section) -> None:
    from benchmarks.submissions import six_submissions

    s = run.sizes
    images = s.submit_images
    row = six_submissions(run.work / "submissions", device=str(run.device), images_per_zip=images,
                          smoke=run.smoke, check_images=s.submit_check_images)
    ok = bool(row.get("ok"))
    sec.notes.append(f"{images} images per zip run (DIV2K test size), `seconds` scaled to 100 per zip from a "
                     f"{images}-image and a 1-image run; {s.submit_check_images} image(s) per zip compared with the "
                     f"old tiled NCHW path; {row.get('note', '')}".rstrip("; "))
    sec.check(row["item"], ok, seconds=row["seconds"], minutes=row.get("minutes"), run_s=row.get("run_s"),
              fixed_run_s=row.get("fixed_run_s"), images_per_zip=images,
              max_diff_vs_old_path=row.get("max_diff_vs_old_path"), goal_s=row.get("goal_s"),
              within_goal=row.get("within_goal"), figure=PROJECTED,
              note=f"{MEASURED} on {images} images per zip, scaled to 100; zip problems: "
                   f"{row.get('problems') or 'none'}")
