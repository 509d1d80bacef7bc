"""Batches on the training device: uint8 rows in, augmented and normalised float NCHW out.

`DeviceBatches` gathers rows of a decoded `ImageSet` on the host (from RAM or the memory-mapped
decode cache) and does everything else on the device: conversion, random crops and flips
(`Augment`) and normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from objectives.data.types import ImageSet


@dataclass(frozen=True)
class Augment:
    """Random training augmentation, per image, on the device.

    `crop_padding` is torchvision's ``RandomCrop(size, padding)``: pad with black, cut a random
    window of the original size. Flips keep labels; fundus images have no preferred orientation
    (h and v), natural photographs only a left-right symmetry (h), digits none.
    """

    hflip: bool = False
    vflip: bool = False
    crop_padding: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")


class DeviceBatches:
    """Batches of one ImageSet as normalised float NCHW tensors on `device`.

    uint8 rows are gathered on the host (from RAM or the memory-mapped cache), copied once per
    batch (pinned and asynchronous on CUDA), then converted, augmented and normalised on the
    device. Preparing a batch never waits for the device: the random draws come from a CPU
    generator (whose state a checkpoint saves) and reach the device as pinned, non-blocking
    copies, and no device operation here reads a result back to the host.

    `drop_last` leaves out the last, incomplete batch whenever there is a full one (training
    does: every step then has the same shape, so cuDNN's autotuning and torch.compile see one
    input shape, and BatchNorm never trains on a remainder of one image).
    """

    def __init__(
        self,
        images: ImageSet,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: Augment = Augment(),
        channels_last: bool = False,
        seed: int = 0,
        prefetch: bool = True,
        drop_last: bool = False,
    ) -> None:
        self.images = images
        self.prefetch = prefetch
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator().manual_seed(seed)
        # (x / 255 - mean) / std as one multiply-add on the 0..255 values
        std_, mean_ = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        self.scale = self._to_device(std_.mul(255.0).view(1, 3, 1, 1).reciprocal())
        self.bias = self._to_device(mean_.div(std_).neg().view(1, 3, 1, 1))

    def __len__(self) -> int:
        if self.drop_last and len(self.images) >= self.batch_size:
            return len(self.images) // self.batch_size
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.images.index
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).numpy()]
        starts = range(0, len(order), self.batch_size)[: len(self)]
        if not self.prefetch or len(starts) < 2:
            for start in starts:
                yield self._batch(order[start : start + self.batch_size])
            return
        # One batch ahead on a helper thread (torch and numpy copies release the GIL): the gather
        # and preparation of batch k+1 overlap step k instead of adding to it. The helper makes
        # the random draws in batch order, so augmentation stays reproducible.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") as pool:
            pending = pool.submit(self._batch, order[: self.batch_size])
            for start in starts[1:]:
                ready = pending.result()
                pending = pool.submit(self._batch, order[start : start + self.batch_size])
                yield ready
            yield pending.result()

    def _batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(rows)  # sequential reads from the memory-mapped cache
        y = torch.from_numpy(self.images.labels[rows])
        if self.device.type == "cuda":  # gathered straight into pinned memory: one host copy, an asynchronous transfer
            x = torch.empty((len(rows), *self.images.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
            np.take(self.images.images, rows, axis=0, out=x.numpy())
        else:
            x = torch.from_numpy(self.images.images[rows])
        return self._prepare(x.to(self.device, non_blocking=True)), self._to_device(y)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the device without waiting for it: copying pageable memory to
        CUDA is a blocking copy that first waits for the work queued on the stream (the step
        running on the GPU); from pinned memory it is queued like a kernel."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> augmented, normalised float NCHW. Crops and flips move uint8 (a quarter
        of the bytes of float); conversion and normalisation are then two passes."""
        n = x.shape[0]
        pad = self.augment.crop_padding
        offsets = torch.randint(2 * pad + 1, (2, n), generator=self.generator) if pad else None
        cases = self._flip_cases(n)
        if offsets is not None:
            x = self._crop_and_flip(x, pad, offsets, cases)
        elif cases is not None:
            x = self._flip(x, cases)
        x = x.permute(0, 3, 1, 2).float()  # keeps the NHWC layout: channels_last, no transpose
        x = torch.addcmul(self.bias, x, self.scale, out=x)
        return x.contiguous(memory_format=self.memory_format)

    def _flip_cases(self, n: int) -> torch.Tensor | None:
        """Per image, on the host: bit 0 flips it left-right, bit 1 up-down, each with
        probability 1/2 where the augmentation allows it; None when it allows neither."""
        allowed = (1 if self.augment.hflip else 0) | (2 if self.augment.vflip else 0)
        if not allowed:
            return None
        return torch.randint(4, (n,), generator=self.generator) & allowed

    def _flip(self, x: torch.Tensor, cases: torch.Tensor) -> torch.Tensor:
        """Flip each image as its case says. The images of each case are found on the host (no
        device sync), so an image moves at most once and untouched images are not copied. `x`
        is this batch's own buffer (never the cache), so it is flipped in place."""
        groups = [(cases == code).nonzero().squeeze(1) for code in (1, 2, 3)]
        chosen = self._to_device(torch.cat(groups))  # one copy for the three cases
        start = 0
        for dims, group in zip(((2,), (1,), (1, 2)), groups):
            if len(group):
                rows = chosen[start : start + len(group)]
                x[rows] = x[rows].flip(dims)
            start += len(group)
        return x

    def _crop_and_flip(self, x: torch.Tensor, pad: int, offsets: torch.Tensor,
                       cases: torch.Tensor | None) -> torch.Tensor:
        """One gather for the whole batch (NHWC): each image padded with black by `pad`, cut back
        at its own offset (`offsets`: 2 x n, top and left) and flipped as its case says."""
        n, h, w, c = x.shape
        if cases is None:
            cases = torch.zeros(n, dtype=torch.long)
        top, left, cases = self._to_device(torch.cat([offsets, cases.view(1, n)])).unbind(0)
        padded = F.pad(x, (0, 0, pad, pad, pad, pad))
        tall, wide = h + 2 * pad, w + 2 * pad
        r, k = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        rows = top.view(n, 1) + torch.where((cases & 2).bool().view(n, 1), h - 1 - r, r)
        cols = left.view(n, 1) + torch.where((cases & 1).bool().view(n, 1), w - 1 - k, k)
        pixel = (torch.arange(n, device=x.device).view(n, 1, 1) * tall + rows.view(n, h, 1)) * wide + cols.view(n, 1, w)
        return padded.view(n * tall * wide, c).index_select(0, pixel.view(-1)).view(n, h, w, c)
