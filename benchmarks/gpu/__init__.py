"""GPU proof: one prepared run that checks and measures every GPU path of ntire in under 6 minutes.

    PYTHONPATH=. python3 benchmarks/gpu --out OUT [--wheels DIR] [--budget-s 420]
    .venv/bin/python benchmarks/gpu --smoke --out OUT        # the same on the CPU, tiny, seconds

Written for a short, one-piece loan of a GPU machine (one H100/H200, 16 cores, no network, no
venv: python3 with torch, accelerate, safetensors, numpy, scipy, pillow, scikit-image, pyyaml,
tqdm; no webdataset, mlflow, ray or deepspeed). Sections, in this order, one module each:

1. environment: GPU, driver, CUDA, cuDNN, torch versions; measured ceilings: a bf16 and a TF32
   8192^3 matmul (TFLOP/s, the MFU denominators) and a device-to-device copy (GB/s).
2. correctness: EDSR, EDSR-baseline and MDSR forward on the GPU against a float64 CPU reference
   (fp32 with TF32 off and on, bf16 autocast); tiled == whole image (`ntire.inference.upscale_image`,
   fp32, TF32 off); self-ensemble on the GPU == on the CPU; one training step's loss and gradients
   against the float64 CPU step.
3. training: ntire's `fit()` beside a plain PyTorch loop doing the same step (forward, L1, backward,
   Adam, optional clipping; `cudnn.benchmark` on, Adam fused where available), on WebDataset shards
   of 16 synthetic DIV2K-sized images (2040x1356, bicubic x2 LR, made in the background while
   sections 1-2 run), EDSR-baseline and EDSR, batch 16, 48x48, x2. First, for each model, the
   `default` row: what `ntire train` does with no speed flags, beside the plain loop of the
   precision and layout fit() chose, captured when fit() captured; then the plain loop captured
   whole as a CUDA graph (torch.cuda.graph after warm-up steps on a side stream, capturable Adam)
   beside fit() asked to capture, fp32 (TF32 convolutions) and bf16 + channels_last; then eager:
   fp32, bf16, bf16 + channels_last; and + torch.compile last (skipped with a note when its first
   call takes longer than --compile-limit-s or the budget cannot hold it). A case the default
   row already measured is not run twice. Patches/s, step ms, TFLOP/s (analytic: 2*Cin*Cout*k*k
   per output pixel of every conv, x3 for a training step), MFU against the measured matmul
   ceiling of the precision, fit()/plain, peak memory, and the loader: the time fit() waited for
   batches (fit() takes the batch iterator and a log callback as arguments).
4. mdsr: one update per scale through ntire's training step, and branch isolation at the paper's
   lr: an x3 update leaves the x2/x4 branches' weights and Adam state exactly untouched (every
   weight checked finite first: NaN weights fail the check by name, they do not compare).
5. inference: EDSR x2/x3/x4 on the LR of a 2040x1356 image: whole image, tiled (512, as the
   submission manifest), tiled + x8 self-ensemble; MP/s (output megapixels per second), peak
   memory, PNG read/write; and the PROJECTED time of all six challenge submissions (2 tracks x 3
   scales, x8 ensemble on the bicubic track only) for the 100 DIV2K test images (goal < 10 min).
6. submissions: all six zips made by `ntire submit` end to end (LR PNGs in, validated zips out;
   whole images, TF32, channels_last, the PNG worker pool) with random-weight EDSR on 5 DIV2K-test-
   sized images per zip, `seconds` scaled to 100 per zip from that run and a 1-image run (the
   fixed cost), one image per zip compared with the old tiled NCHW path (within 1 grey level):
   the row `six submissions ... end to end` (benchmarks/submissions.py; goal <= 420 s on one H200).
7. accelerate: `accelerate launch` (cluster/accelerate/multi_gpu.yaml with --num_processes 1: one
   DDP process over NCCL on the GPU) of ntire/train.py for 3 steps, then `python -m ntire upscale`
   with the exported model, compared with the same model run in this process.

Beside them: __main__.py (the command line, the section loop, signals, exit status), report.py
(report.json/report.md), clock.py (timing, deadlines), context.py (one run's state, child
processes), sizes.py (GPU vs smoke sizes), data.py (synthetic shards, wheels), common.py
(numerics the sections share), plain.py (the plain training loops).

Every figure is timed with CUDA events after a warm-up (perf_counter on the CPU) and every row says
whether it is `measured` here or `projected` from measured figures. `report.json` and `report.md`
are rewritten under --out after each section (and each training case), so a run cut short still
reports; a section that raises records its error and a traceback tail, and the next one runs.
The logs of the processes it starts are kept in OUT/logs/.

Time: a global deadline (--budget-s, default 420 s from start, of which the six submissions keep
2 minutes) skips a section with a note when less than its minimum is left. Nothing may eat the
time kept for the sections after it: a section, each training case and compile's first step are
stopped by SIGALRM when their time is up (and reported as such); the training section, whose
cases run longest, starts a case only when it fits (the default rows first, compile cases last).
The last section may overrun the deadline by --grace-s at most. SIGTERM (as `timeout` sends)
writes the report and exits 143. Exit status: 0 when every section that ran passed its checks, 1
when a section failed or a check did, 2 without a CUDA device (unless --smoke).

`--smoke` runs every section on the CPU in seconds with tiny sizes (tiny images, 1 block of 8
features, 2-3 steps, a 256^3 matmul; torch.compile with the "eager" backend; no CUDA graphs, so
the captured plain loop is skipped with a note), so the code cannot rot while no GPU is around
(tests/benchmarks/test_gpu.py runs it). Its figures only show that the code runs; they say
nothing about speed.

`--wheels DIR`: the GPU machine has no webdataset (which ntire's shard code imports). A wheel of a
pure-Python package is a zip file Python imports from directly, so every `DIR/*.whl` is put first
on sys.path (after the repository root) before ntire's data code is imported, and on PYTHONPATH
for the processes this run starts. webdataset needs braceexpand too. Make the folder on any
machine where both are installed (no network needed), then carry it along:

    .venv/bin/python benchmarks/gpu --make-wheels .whl     # .whl/: ignored by git
    PYTHONPATH=. timeout -s TERM 450 python3 benchmarks/gpu --out "$OUT" --wheels .whl   # run timeout_s 480

(`pip download --no-deps -d .whl webdataset braceexpand` gives the published wheels instead.)
"""
