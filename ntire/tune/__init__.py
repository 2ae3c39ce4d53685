"""Ray Tune sweeps over the training loop, split by where each part runs: `options` holds what
`ntire tune` takes (SweepOptions, SweepSetup: dataclass fields, its flags; no Ray); `space` reads a search
space YAML file, checks it against a training config and applies drawn values to one; `trial`
holds what runs inside each trial (its config, the report hook that sends Ray validation metrics
with checkpoints, `run_trial` and `run_distributed_trial`); `sweep` is the driver (`run_sweep`,
`resume_sweep`: the base config, the Ray session, the parent MLflow run, `sweep.yaml` and
`best.yaml`). Each imports only those before it: options, space <- trial <- sweep.
"""
