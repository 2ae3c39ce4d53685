"""NTIRE challenge submissions, per track and scale: predict -> readme -> validated zip -> scores.

A manifest (YAML) names the checkpoint serving each track and scale. The builder only predicts,
packages and checks; it never trains (a missing checkpoint is an error saying how to make it).
The modules follow the data, each importing only those before it:

- `manifest`: the manifest's YAML as dataclasses (`SubmissionManifest`), the dataset root it
  names, and the checkpoint each scale uses (`find_checkpoint`, `manifest_checkpoints`).
- `predict`: running a model over a split's LR images, one SR PNG each, with per-image runtimes
  and the setup that made them recorded so an interrupted run resumes.
- `package`: the submission format: `readme.txt`, the validator listing every problem of a
  folder or zip, writing the zip so a broken build never replaces a valid one, and what
  `ntire submit --check` compares a zip against.
- `report`: `SubmissionResult` per scale; on the valid split the scores against bicubic and the
  other self-ensemble setting, the table, `results.json` and the MLflow run.
- `build`: `build_track`, putting the above together for one track.

Output folder, e.g. `runs/submissions/sample-valid`:

    bicubic/x2/sr/0801x2.png ... readme.txt   what the zip holds
    bicubic/x2/alt/...                        the other ensemble setting (valid split only)
    bicubic/x2/state-sr.json, scores.json     per-image runtimes and setup; valid-split scores
    bicubic_x2.zip, bicubic_x2.inputs.json    the submission, and its LR sizes for --check
    bicubic-report/table.txt, results.json    what `ntire submit` prints and logs to MLflow
"""
