"""The training stream: from WebDataset shards to batches of aligned LR/HR patch pairs.

Training stream, per data-loader worker:

    shards (per-epoch seeded order, split by rank then worker)
      -> samples (checked from headers, decoded once: ntire.data.samples)
      -> K aligned random patch pairs per sample, identical flips/rot90 on LR and HR
      -> a round of `shuffle_buffer` patches, fully permuted across its batches
      -> batches of one scale each (uint8 tensors until the training step converts them)

Everything random is a pure function of (seed, rank, worker, round) or, for the scale of a batch,
of (seed, step); so the stream is reproducible, every rank uses the same scale at the same step
(MDSR's branches stay in step under DDP), and `start_step` jumps straight to a step: sample
counts from the shard manifest locate the round's first sample without decoding anything before
it. Batch t of a rank comes from worker t % num_workers (DataLoader serves workers in turn), so
a resumed run continues with exactly the batches an uninterrupted run would have produced, given
the same shards, seed, world size and num_workers.

Epochs are implemented here rather than with WebDataset's `resampled=True`, which ignores the
node splitter (ranks would overlap); within an epoch ranks and workers read disjoint shards that
together cover the set. With fewer shards than ranks x workers, each reads every shard and keeps
every (ranks x workers)-th sample instead (disjoint and complete, at the cost of extra reading).

`TrainBatches` iterates a plain torch DataLoader; do not pass it through `accelerator.prepare`,
which would split it a second time.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ntire.data.samples import DecodedSample
from ntire.data.tar_reader import ShardReader, count_samples, expand_urls, shard_file_name
from ntire.errors import DataError

log = logging.getLogger(__name__)


class Batch(NamedTuple):
    """One training batch; every patch in it has the same scale."""

    lr: torch.Tensor
    """uint8 (N, 3, p, p) LR patches."""

    hr: torch.Tensor
    """uint8 (N, 3, p * scale, p * scale) HR patches, pixel-aligned with `lr`."""

    scale: int
    """The upscaling factor of this batch."""


class _Bad(NamedTuple):
    """A sample skipped with skip_bad_samples=True. It stays in the stream so that rounds keep
    their sample positions (resume stays exact); its patch slots go to the next good sample."""

    url: str
    key: str
    reason: str


# ---------------------------------------------------------------------------------------------
# Splitting, epochs and rounds


@dataclass(frozen=True)
class _Part:
    """What one consumer (rank, worker) reads in one epoch."""

    urls: list[str]
    modulus: int  # keep samples whose index in the epoch's concatenated `urls` is
    residue: int  # congruent to `residue` modulo `modulus`


def epoch_part(
    urls: Sequence[str], *, epoch: int, seed: int, rank: int, world: int, worker: int, workers: int
) -> _Part:
    """The shards (and sample residue) one rank's worker reads in `epoch`."""
    order = np.random.default_rng([seed, 0xE90C, epoch]).permutation(len(urls))
    shuffled = [urls[i] for i in order]
    consumers = world * workers
    if len(urls) >= consumers:
        return _Part(shuffled[rank::world][worker::workers], 1, 0)
    return _Part(shuffled, consumers, rank * workers + worker)


def _round_buffers(
    batch: int, patch: int, scales: list[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """LR and HR batch tensors of one round, all views of one storage.

    In a DataLoader worker that storage is allocated in shared memory once per round: sending a
    tensor whose storage is not shared makes torch copy it into a fresh shared segment, which
    cost ~8 ms per 16-patch HR batch on the 2-core development VM, three times the work of
    producing the batch.
    """
    lr_size = batch * 3 * patch * patch
    hr_sizes = [batch * 3 * (patch * s) ** 2 for s in scales]
    storage = torch.empty(lr_size * len(scales) + sum(hr_sizes), dtype=torch.uint8)
    if get_worker_info() is not None:
        storage.share_memory_()
    lr, hr, offset = [], [], 0
    for _ in scales:
        lr.append(storage[offset : offset + lr_size].view(batch, 3, patch, patch))
        offset += lr_size
    for s, size in zip(scales, hr_sizes):
        hr.append(storage[offset : offset + size].view(batch, 3, patch * s, patch * s))
        offset += size
    return lr, hr


def _transform(x: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 flips/rotations of an (H, W, C) array, as a view."""
    if op & 4:
        x = x.transpose(1, 0, 2)
    if op & 1:
        x = x[:, ::-1]
    if op & 2:
        x = x[::-1]
    return x


class PatchBatches(IterableDataset):
    """The batch stream of one rank; see the module docstring. Use `train_batches`."""

    def __init__(
        self,
        urls: list[str],
        *,
        scales: tuple[int, ...],
        batch_size: int,
        patch_size: int,
        patches_per_sample: int,
        shuffle_buffer: int,
        seed: int,
        workers: int,
        rank: int,
        world: int,
        start_step: int,
        skip_bad_samples: bool,
        augment: bool,
        counts: dict[str, int],
        bad_counter: Any = None,
    ):
        self.urls = urls
        self.scales = scales
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.k = patches_per_sample
        self.round_batches = max(1, shuffle_buffer // batch_size)
        self.round_samples = math.ceil(self.round_batches * batch_size / patches_per_sample)
        self.seed = seed
        self.workers = workers
        self.rank = rank
        self.world = world
        self.start_step = start_step
        self.skip_bad = skip_bad_samples
        self.augment = augment
        self.counts = dict(counts)
        self.bad_counter = bad_counter
        self.bad_local = 0

    # -- public helpers -------------------------------------------------------------------

    def scale_at(self, step: int) -> int:
        """The scale of global step `step` (the same on every rank)."""
        if len(self.scales) == 1:
            return self.scales[0]
        rng = np.random.default_rng([self.seed, 0x5CA1E, step])
        return self.scales[int(rng.integers(len(self.scales)))]

    def part(self, epoch: int, worker: int) -> _Part:
        return epoch_part(self.urls, epoch=epoch, seed=self.seed, rank=self.rank,
                          world=self.world, worker=worker, workers=self.workers)

    # -- the sample stream of one (virtual) worker ----------------------------------------

    def _count(self, url: str) -> int:
        if url not in self.counts:
            log.info("counting samples of %s (no manifest entry)", url)
            self.counts[url] = count_samples(url)
        return self.counts[url]

    def _locate(self, worker: int, position: int) -> tuple[int, int]:
        """(epoch, index within that epoch's concatenated shards) of the worker's n-th sample."""
        epoch = 0
        while True:
            part = self.part(epoch, worker)
            total = sum(self._count(u) for u in part.urls)
            mine = len(range(part.residue, total, part.modulus))
            if mine == 0:
                raise self._empty(epoch, worker)
            if position < mine:
                return epoch, part.residue + position * part.modulus
            position -= mine
            epoch += 1

    def _empty(self, epoch: int, worker: int) -> DataError:
        return DataError(
            f"rank {self.rank} worker {worker} has no samples in epoch {epoch}: the shards hold "
            f"fewer samples than ranks x workers ({self.world} x {self.workers}) or are empty"
        )

    def samples(self, worker: int, position: int = 0) -> Iterator[DecodedSample | _Bad]:
        """The worker's infinite sample stream from its `position`-th sample on."""
        epoch, first = self._locate(worker, position) if position else (0, 0)
        while True:
            produced = 0
            for item in self.epoch_samples(epoch, worker, first):
                produced += 1
                yield item
            if produced == 0 and not first:
                raise self._empty(epoch, worker)
            epoch += 1
            first = 0

    def epoch_samples(
        self, epoch: int, worker: int, first: int = 0
    ) -> Iterator[DecodedSample | _Bad]:
        """The worker's samples in `epoch`, from index `first` of the epoch's shard sequence."""
        part = self.part(epoch, worker)
        base = 0  # epoch index of the current shard's first sample
        for url in part.urls:
            if first and base + self._count(url) <= first:  # wholly before the start
                base += self._count(url)
                continue

            def keep(i: int, base=base) -> bool:
                g = base + i
                return g >= first and g % part.modulus == part.residue

            reader = ShardReader(url, keep)
            try:
                for _, raw in reader:
                    yield self._decode(raw)
            except DataError as e:
                if not self.skip_bad:
                    raise
                # The rest of this shard is unreadable; resuming past it is no longer exact.
                self._note_bad(str(e))
                yield _Bad(url, "?", str(e))
            base += reader.count

    def _decode(self, raw: dict[str, Any]) -> DecodedSample | _Bad:
        try:
            return DecodedSample(raw, self.scales, self.patch_size)
        except DataError as e:
            if not self.skip_bad:
                raise
            self._note_bad(str(e))
            return _Bad(raw["__url__"], raw["__key__"], str(e))

    def _note_bad(self, message: str) -> None:
        self.bad_local += 1
        if self.bad_counter is not None:
            with self.bad_counter.get_lock():
                self.bad_counter.value += 1
        log.warning("skipping bad sample: %s", message)

    # -- rounds -----------------------------------------------------------------------------

    def _round(self, stream: Iterator, worker: int, round_index: int) -> list[Batch]:
        """All batches of one round: `round_samples` samples cut into a permuted set of slots."""
        B, K, p, R = self.batch_size, self.k, self.patch_size, self.round_batches
        slots = R * B
        rng = np.random.default_rng([self.seed, self.rank, worker, round_index])
        perm = rng.permutation(slots)
        uy, ux = rng.random(slots), rng.random(slots)
        ops = rng.integers(0, 8, slots) if self.augment else np.zeros(slots, dtype=np.int64)
        first_local = round_index * R
        scales = [self.scale_at((first_local + b) * self.workers + worker) for b in range(R)]
        lr_t, hr_t = _round_buffers(B, p, scales)
        lr_out = [t.numpy() for t in lr_t]
        hr_out = [t.numpy() for t in hr_t]

        def cut(sample: DecodedSample, slot_ids) -> None:
            needed = {scales[i // B] for i in slot_ids}
            hr = sample.image("hr")
            lrs = {s: sample.image(f"lr{s}") for s in needed}
            for i in slot_ids:
                b, j = divmod(int(i), B)
                s = scales[b]
                lr = lrs[s]
                ly = int(uy[i] * (lr.shape[0] - p + 1))
                lx = int(ux[i] * (lr.shape[1] - p + 1))
                lr_patch = lr[ly : ly + p, lx : lx + p]
                hr_patch = hr[ly * s : (ly + p) * s, lx * s : (lx + p) * s]
                lr_out[b][j] = _transform(lr_patch, int(ops[i])).transpose(2, 0, 1)
                hr_out[b][j] = _transform(hr_patch, int(ops[i])).transpose(2, 0, 1)

        debt: list[int] = []  # slots of bad samples, filled from the next good one
        last_good = None
        for m in range(self.round_samples):
            item = next(stream)
            mine = list(perm[m * K : (m + 1) * K])
            if isinstance(item, _Bad):
                debt.extend(mine)
                continue
            try:
                cut(item, mine + debt)
            except DataError as e:  # a member whose header was fine but whose data is not
                if not self.skip_bad:
                    raise
                self._note_bad(str(e))
                debt.extend(mine)
                continue
            debt = []
            last_good = item
        if debt:
            if last_good is None:
                raise DataError(
                    f"every sample of round {round_index} (rank {self.rank}, worker {worker}) "
                    "was bad; see the warnings above"
                )
            cut(last_good, debt)
        return [
            Batch(lr_t[b], hr_t[b], scales[b])
            for b in range(R)
        ]

    def worker_batches(self, worker: int, first_local: int = 0) -> Iterator[Batch]:
        """Batches of one virtual worker, from its `first_local`-th batch on."""
        round_index, drop = divmod(first_local, self.round_batches)
        stream = self.samples(worker, round_index * self.round_samples)
        while True:
            batches = self._round(stream, worker, round_index)
            yield from batches[drop:]
            drop = 0
            round_index += 1

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker_id, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"dataset built for {self.workers} workers runs in {workers}")
        # The DataLoader serves workers in turn starting from worker 0, so in a run resumed at
        # start_step, worker w plays the part that produced step start_step + w originally.
        step = self.start_step + worker_id
        return self.worker_batches(step % self.workers, step // self.workers)


# ---------------------------------------------------------------------------------------------
# Public entry points


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


FEW_SHARDS_WARN_BYTES = 1 << 30
"""Extra bytes read per pass (shards fewer than readers) above which `train_batches` warns."""


def _warn_few_shards(urls: list[str], world: int, workers: int) -> None:
    """Warn, with what to do, when fewer shards than readers (ranks x workers) make every reader
    go through every shard, unless the extra reading is small (local shards of a small dataset,
    such as the sample's, where it costs less than decoding)."""
    readers = world * workers
    if len(urls) >= readers:
        return
    local = [Path(u) for u in urls if "://" not in u and not u.startswith("pipe:")]
    total = sum(p.stat().st_size for p in local if p.is_file()) if len(local) == len(urls) else None
    extra = None if total is None else total * (readers - 1)
    if extra is not None and extra < FEW_SHARDS_WARN_BYTES:
        log.debug("%d shards for %d readers: %.0f MiB read again per pass", len(urls), readers, extra / 2**20)
        return
    size = f"{max(1, total // readers // 2**20)}MiB" if total else "SIZE"
    log.warning(
        "%d shard(s) for %d ranks x %d workers: each reader goes through every shard and keeps "
        "its share of the samples%s. Write at least %d shards and train on them: `ntire data "
        "shard --root DATA --track T --scales S.. --shard-size %s --out SHARDS`, then `--data "
        "SHARDS --valid-data DATA` (a shard folder is read as it is, not cached again); or use "
        "fewer --num-workers",
        len(urls), world, workers,
        f" ({extra / 2**30:.1f} GiB read again per pass)" if extra is not None else "",
        readers, size,
    )


def _manifest_counts(urls: list[str], manifest: Any) -> dict[str, int]:
    """Sample count per URL: from `manifest` by shard file name, else from the manifest.json
    beside each local shard."""
    from ntire.data.shard_manifest import MANIFEST_NAME, ShardManifest, read_manifest

    counts: dict[str, int] = {}
    if manifest is not None:
        if not isinstance(manifest, ShardManifest):
            manifest = read_manifest(manifest)
        by_name = manifest.counts()
        for url in urls:
            if shard_file_name(url) in by_name:
                counts[url] = by_name[shard_file_name(url)]
        return counts
    found: dict[Path, dict[str, int]] = {}
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            continue
        folder = Path(url).parent
        if folder not in found:
            path = folder / MANIFEST_NAME
            found[folder] = read_manifest(path).counts() if path.is_file() else {}
        name = Path(url).name
        if name in found[folder]:
            counts[url] = found[folder][name]
    return counts


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only copy bytes; threads would fight the training step


class TrainBatches:
    """The infinite batch stream returned by `train_batches`: iterate it (or call next on it).

    `bad_samples` counts samples skipped with skip_bad_samples=True, across all workers.
    """

    def __init__(self, dataset: PatchBatches, num_workers: int, counter: Any, *, pin_memory: bool = False):
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._counter = counter
        self._it: Iterator[Batch] | None = None

    @property
    def bad_samples(self) -> int:
        return int(self._counter.value)

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=_worker_init if self.num_workers else None,
            prefetch_factor=4 if self.num_workers else None,
            pin_memory=self.pin_memory,
        )
        try:
            yield from loader
        except DataError as e:
            raise DataError(_worker_message(str(e))) from None

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self)
        return next(self._it)

    def close(self) -> None:
        """Stop the DataLoader's worker processes now (fit() calls this as it ends); left to the
        garbage collector, the generator's reference cycle keeps them alive until a later
        collection, which then stalls ~5 s joining them."""
        it, self._it = self._it, None
        if it is not None:
            it.close()


def _worker_message(message: str) -> str:
    # DataLoader re-raises a worker's error with its traceback in the message; keep the cause.
    if "Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split("DataError: ", 1)[-1]
    return message


def train_batches(
    urls: str | list[str],
    *,
    scales: tuple[int, ...],
    batch_size: int = 16,
    patch_size: int = 48,
    patches_per_sample: int = 8,
    shuffle_buffer: int = 256,
    seed: int = 0,
    num_workers: int = 2,
    start_step: int = 0,
    skip_bad_samples: bool = False,
    augment: bool = True,
    manifest: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
) -> TrainBatches:
    """An infinite, reproducible stream of training batches from WebDataset shards.

    Args:
        urls: shard URLs: paths, brace patterns (`dir/shard-{000000..000009}.tar`) or anything
            WebDataset opens, e.g. `pipe:aws s3 cp s3://bucket/shard-000000.tar -`.
        scales: scales to train; each batch draws one (seeded, the same on every rank).
        batch_size: patches per batch.
        patch_size: LR patch size p (HR patches are p * scale).
        patches_per_sample: patches cut from each decoded sample (K).
        shuffle_buffer: patches shuffled together (a round); rounded down to whole batches.
        seed: seed of every random choice (shard order, patch positions, flips, scales).
        num_workers: DataLoader worker processes (0: read in the calling process).
        start_step: the first batch to produce; a resumed run passes its step count to continue
            with the batches an uninterrupted run would have had.
        skip_bad_samples: log and count bad samples (`bad_samples`) instead of raising.
        augment: random flips and 90-degree rotations.
        manifest: shard manifest (path, folder or ShardManifest) whose sample counts make skipping
            ahead free; found automatically beside local shards. Without one, shards before the
            resume point are read once (headers only) to count their samples.
        rank, world_size: override torch.distributed / RANK, WORLD_SIZE (for tests and tools).
        pin_memory: hand out batches in page-locked memory (for non-blocking copies to a GPU).
    """
    urls = expand_urls(urls)
    scales = tuple(int(s) for s in scales)
    if not scales or any(s < 1 for s in scales):
        raise DataError(f"scales must be positive integers, got {scales}")
    positive = dict(batch_size=batch_size, patch_size=patch_size,
                    patches_per_sample=patches_per_sample, shuffle_buffer=shuffle_buffer)
    for name, value in positive.items():
        if value < 1:
            raise DataError(f"{name} must be at least 1, got {value}")
    if start_step < 0 or num_workers < 0:
        raise DataError("start_step and num_workers must not be negative")
    auto_rank, auto_world = _rank_world()
    rank = auto_rank if rank is None else rank
    world = auto_world if world_size is None else world_size
    if not 0 <= rank < world:
        raise DataError(f"rank {rank} is outside world size {world}")
    workers = max(1, num_workers)
    _warn_few_shards(urls, world, workers)
    counter = multiprocessing.Value("q", 0)
    dataset = PatchBatches(
        urls, scales=scales, batch_size=batch_size, patch_size=patch_size,
        patches_per_sample=patches_per_sample, shuffle_buffer=shuffle_buffer, seed=seed,
        workers=workers, rank=rank, world=world, start_step=start_step,
        skip_bad_samples=skip_bad_samples, augment=augment,
        counts=_manifest_counts(urls, manifest), bad_counter=counter,
    )
    return TrainBatches(dataset, num_workers, counter, pin_memory=pin_memory)
