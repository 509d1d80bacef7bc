"""The embedded dataset "synthetic-fundus": generated diabetic-retinopathy fundus photographs, as eye pairs.

Why it exists: a user without data (or a test, or CI) should still run the tool's real image path
end to end: the DR lab layout's CSVs, JPEG decoding, the decode cache, patient-grouped splits,
training and the metrics. So this module writes ordinary JPEG files in that layout rather than
handing tensors over.

Why pairs: real Kaggle DR images are a patient's two eyes, ``<patient>_left`` and
``<patient>_right``, which usually share a grade and look alike, so a split that puts one eye in
training and the other in validation rewards memorising patients. The images here are named and
made the same way (``train_00017_left``, ``train_00017_right``; train and test patients are
distinct), so the default run exercises grouping by patient. Each patient has one grade (both
eyes) and patient-level looks (retina colour and pigmentation, optic disc and macula, vessel
calibre, lesion colours, how severe the lesions are for the grade); each eye has its own
photograph (framing, exposure, pigment pattern, vessel tree, lesion counts and positions) and the
left eye's anatomy is the right eye's mirrored (the optic disc on the nasal side): alike, never
copies. ``train_images`` / ``test_images`` count images: a split has ceil(images / 2) patients,
and when the count is odd its last patient has a left eye only.

What the images are: a black frame around an orange-red retina with a yellowish optic disc, a dark
macula and branching vessels, plus lesions whose number and kind grow with the grade, as in real
DR (0 none, 1 microaneurysms, 2 adds exudates and a few haemorrhages, 3 many haemorrhages and
cotton-wool spots, 4 adds new vessels and preretinal bleeds). Counts come from overlapping
Poisson ranges, so neighbouring grades overlap: the task is learnable but not trivial. Every
length is relative to the retina's radius, so lesions survive the downscale to 64 px that the
default run uses. Patients' grades follow the Kaggle DR mix (about 73 / 7 / 15 / 2.5 / 2.5 %), so
the images do too, and the class imbalance that the tool's losses and metrics care about is there.

Generation is deterministic (each patient and each eye has its own generator seeded by (seed,
split, patient[, eye]), so worker order does not matter), atomic (written to a temporary sibling
folder, a ``COMPLETE`` marker last, then renamed) and idempotent (an existing complete folder with
the same parameters and layout is returned untouched; one written by the older, unpaired
generator records no eye-pair layout and is refused).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from objectives.folders import build_once
from objectives.progress import SILENT, Bar

__all__ = ["CLASS_NAMES", "GRADE_MIX", "generate", "grade_counts"]

GRADE_MIX: tuple[float, ...] = (0.73, 0.07, 0.15, 0.025, 0.025)
CLASS_NAMES: tuple[str, ...] = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")

_DATASET_NAME = "synthetic-fundus"
_LAYOUT = "eye-pairs"  # in the marker and compared on reuse: a folder of the older unpaired images is refused
_GENERATOR_VERSION = 2  # recorded in the marker for people; not compared (parameters and layout are)
_JPEG_QUALITY = 90
_MIN_SIZE = 32
_SUPERSAMPLE = 2  # masks are drawn at this factor and box-reduced, i.e. anti-aliased
_SPLIT_CODES = {"train": 0, "test": 1}
_EYES = (("left", -1), ("right", 1))  # name and side: -1 puts the optic disc (nasal) left of centre
_MAX_WORKERS = 8

_Colour = tuple[float, float, float]
_Point = tuple[float, float]


# ---------------------------------------------------------------- grade counts


def grade_counts(total: int, mix: Sequence[float] = GRADE_MIX) -> list[int]:
    """Exact per-grade counts summing to total (largest-remainder rounding), each grade >= 1 when total >= len(mix).

    Largest remainder keeps every count within one of its exact quota; the minimum of one image per
    grade (for grades of positive weight) is then taken from the most over-served grades, because a
    split without a rare grade would make per-class metrics and stratified splits undefined.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {total!r}")
    weights = np.asarray(mix, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"mix must be a non-empty sequence of non-negative numbers, got {mix!r}")
    if weights.sum() <= 0:
        raise ValueError(f"mix must have a positive sum, got {mix!r}")
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    remainders = quotas - counts
    order = sorted(range(len(counts)), key=lambda i: (-remainders[i], i))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    if total >= len(counts):
        for grade in np.flatnonzero((counts == 0) & (weights > 0)):
            donors = np.flatnonzero(counts > 1)
            donor = max(donors, key=lambda i: (counts[i] - quotas[i], -i))
            counts[donor] -= 1
            counts[grade] += 1
    return [int(c) for c in counts]


# ---------------------------------------------------------------- the dataset folder


@dataclass(frozen=True)
class _Params:
    """Everything that decides the bytes written; recorded in the marker and compared on reuse."""

    train_images: int
    test_images: int
    size: int
    seed: int

    def __post_init__(self) -> None:
        # Checked before anything is written, so a bad call leaves no folder behind.
        for name, low in (("train_images", 1), ("test_images", 1), ("size", _MIN_SIZE), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def record(self) -> dict[str, object]:
        return {"dataset": _DATASET_NAME, "layout": _LAYOUT, **asdict(self)}


def generate(
    root: Path,
    train_images: int,
    test_images: int,
    *,
    size: int = 256,
    seed: int = 0,
    bar: Bar = SILENT,
) -> Path:
    """Write the dataset into `root` (DR lab layout) and return root.

    Writes ``train_img.csv``/``train_label.csv``/``test_img.csv``/``test_label.csv`` (headers
    ``image`` and ``level``) and ``<name>.jpeg`` images of `size` x `size` px. Names are
    ``<split>_<patient>_left`` / ``_right`` with ceil(images / 2) patients per split (the last one
    left eye only when the count is odd); per-grade counts of patients from `grade_counts`, both
    eyes of a patient the same grade; rows shuffled image by image, so neither row order nor a
    patient's neighbouring row says anything. Same arguments give byte-identical files.

    Written once and atomically by `objectives.folders.build_once`: a crash never leaves a half
    dataset that looks whole; a complete `root` with the same parameters is returned at once, one
    with anything else is a FileExistsError. `bar` counts the images written (updated from the
    calling thread).
    """
    params = _Params(train_images, test_images, size, seed)
    return build_once(Path(root), params.record(), lambda folder: _write_dataset(folder, params, bar),
                      version=_GENERATOR_VERSION)


@dataclass(frozen=True)
class _EyeImage:
    """One image to write: its name, whose eye it is and its own random stream."""

    name: str
    patient: _Patient
    side: int
    seed: np.random.SeedSequence


def _split_images(split: str, images: int, seed: int) -> list[_EyeImage]:
    """The split's images patient by patient, left eye first: ceil(images / 2) patients, so the
    last one has a left eye only when `images` is odd. Patients' grades in the exact
    `grade_counts` mix, shuffled so that a patient's number says nothing."""
    code = _SPLIT_CODES[split]
    patients = -(-images // 2)
    width = max(5, len(str(patients - 1)))
    grades = _shuffled_labels(patients, seed, code).tolist()
    eyes: list[_EyeImage] = []
    for number, grade in enumerate(grades):
        patient = _sample_patient(grade, np.random.default_rng([seed, code, 1, number]))
        for k, (eye, side) in enumerate(_EYES):
            eyes.append(_EyeImage(f"{split}_{number:0{width}d}_{eye}", patient, side,
                                  np.random.SeedSequence([seed, code, 2, number, k])))
    return eyes[:images]


def _write_dataset(folder: Path, params: _Params, bar: Bar) -> None:
    """CSVs first (cheap), then the images on a thread pool: numpy, drawing, resizing and JPEG
    encoding release the GIL for most of an image's time (a clear gain from 512 px up)."""
    jobs: list[tuple[Path, _EyeImage]] = []
    for split, code in _SPLIT_CODES.items():
        images = _split_images(split, params.train_images if split == "train" else params.test_images, params.seed)
        order = np.random.default_rng([params.seed, code, 3]).permutation(len(images))
        rows = [images[i] for i in order.tolist()]
        _write_column(folder / f"{split}_img.csv", "image", [row.name for row in rows])
        _write_column(folder / f"{split}_label.csv", "level", [str(row.patient.grade) for row in rows])
        jobs += [(folder / f"{image.name}.jpeg", image) for image in images]
    pool = ThreadPoolExecutor(max_workers=max(1, min(_MAX_WORKERS, os.cpu_count() or 1)))
    try:
        for _ in pool.map(lambda job: _write_image(job[0], job[1], params.size), jobs):
            bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, do not finish the queue first


def _shuffled_labels(total: int, seed: int, split_code: int) -> np.ndarray:
    """Grades in the exact `grade_counts` mix, shuffled so that position says nothing."""
    labels = np.repeat(np.arange(len(GRADE_MIX)), grade_counts(total))
    return np.random.default_rng([seed, split_code, 0]).permutation(labels)


def _write_column(path: Path, header: str, values: Sequence[str]) -> None:
    path.write_text("\n".join([header, *values]) + "\n", newline="\n")


def _write_image(path: Path, image: _EyeImage, size: int) -> None:
    pixels = _render_fundus(image.patient, image.side, np.random.default_rng(image.seed), size)
    Image.fromarray(pixels).save(path, format="JPEG", quality=_JPEG_QUALITY)


# ---------------------------------------------------------------- one patient, one image


@dataclass(frozen=True)
class _Patient:
    """What a patient's two eyes share, so that they look alike: the grade, the fundus's colour
    and pigmentation, the anatomy (lengths in retina radii, the disc's offset towards the nose),
    vessel calibre, lesion colours and how severe the lesions are for the grade."""

    grade: int
    retina: _Colour  # the background's colour
    exposure: float  # of the session; each photograph varies a little around it
    pigment: float  # amplitude of the patchy pigment
    disc_colour: _Colour
    disc_offset: _Point  # (nasal, downward) from the retina's centre
    disc_radius: float
    macula_offset: _Point  # (temporal, downward)
    macula_depth: float  # how much darker the macula is
    calibre: float  # vessel width factor
    severity: float  # factor on the grade's expected lesion counts
    hard_colour: _Colour
    soft_colour: _Colour


def _sample_patient(grade: int, rng: np.random.Generator) -> _Patient:
    """A patient of DR `grade` with the spread seen between real patients."""
    return _Patient(
        grade=grade,
        retina=_jitter(rng, (0.80, 0.34, 0.13), 0.03),
        exposure=rng.uniform(0.8, 1.12),
        pigment=rng.uniform(0.04, 0.08),
        disc_colour=_jitter(rng, (1.0, 0.78, 0.42), 0.03),
        disc_offset=(rng.uniform(0.5, 0.6), rng.normal(0, 0.05)),
        disc_radius=rng.uniform(0.13, 0.16),
        macula_offset=(rng.uniform(0.04, 0.14), rng.normal(0, 0.04)),
        macula_depth=rng.uniform(0.25, 0.4),
        calibre=rng.uniform(0.85, 1.15),
        severity=rng.gamma(12.0, 1 / 12),  # mean 1, sd 0.29: some patients bleed more than others
        hard_colour=_jitter(rng, (0.98, 0.86, 0.38), 0.03),
        soft_colour=_jitter(rng, (0.92, 0.84, 0.72), 0.03),
    )


@dataclass(frozen=True)
class _Eye:
    """The eye in one photograph: the patient's, and where its anatomy lies in pixels (lesions and
    vessels are placed relative to it)."""

    patient: _Patient
    cx: float
    cy: float
    radius: float
    side: int  # +1: optic disc right of centre (a right eye as photographed), -1: left
    disc: _Point
    disc_radius: float
    macula: _Point


def _render_fundus(patient: _Patient, side: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A photograph of one eye (`side` as in `_Eye`) of `patient` as uint8 RGB (size, size, 3);
    what is not the patient's comes from `rng`.

    Colour planes are kept separate (3, H, W) while painting: numpy's loops then run along whole
    rows instead of over a trailing axis of three, which is several times faster.
    """
    eye = _sample_eye(patient, side, rng, size)
    ys, xs = _grid(size)
    rho2 = ((xs - eye.cx) ** 2 + (ys - eye.cy) ** 2) * np.float32(1 / eye.radius**2)
    img = _retina(eye, rng, size, rho2, xs, ys)
    _optic_disc_and_macula(img, eye, xs, ys)
    vessels = _Canvas(size)
    _draw_vessel_tree(vessels, eye, rng)
    if patient.grade >= 4:
        for _ in range(1 + rng.poisson(0.8)):
            _draw_neovascular_tuft(vessels, eye, rng)
    _absorb(img, vessels, 0.45 * size / 256, (0.42, 0.72, 0.62))
    masks = _draw_lesions(eye, rng, size)
    _absorb(img, masks["red"], 0.004 * size, (0.5, 0.85, 0.8))
    _blend(img, masks["hard"], 0.003 * size, patient.hard_colour, 0.85)
    _blend(img, masks["soft"], 0.012 * size, patient.soft_colour, 0.7)
    _absorb(img, masks["dust"], 0.012 * size, (0.35, 0.35, 0.35))
    return _finish(img, eye, rng, rho2)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as broadcastable column and row, so distance maps cost one pass."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    return axis[:, None], axis[None, :]


def _sample_eye(patient: _Patient, side: int, rng: np.random.Generator, size: int) -> _Eye:
    """The camera's framing, with the jitter seen between real photographs, around the patient's
    anatomy, mirrored for the eye's `side`: the disc lies nasal and the macula temporal."""
    cx = size / 2 + rng.normal(0, 0.012 * size)
    cy = size / 2 + rng.normal(0, 0.012 * size)
    radius = size * rng.uniform(0.425, 0.47)
    disc = (cx + side * radius * patient.disc_offset[0], cy + radius * patient.disc_offset[1])
    macula = (cx - side * radius * patient.macula_offset[0], cy + radius * patient.macula_offset[1])
    return _Eye(patient, cx, cy, radius, side, disc, radius * patient.disc_radius, macula)


def _jitter(rng: np.random.Generator, colour: _Colour, spread: float) -> _Colour:
    r, g, b = (float(np.clip(c + rng.normal(0, spread), 0, 1)) for c in colour)
    return r, g, b


def _mottle(rng: np.random.Generator, size: int, pigment: float) -> np.ndarray:
    """Smooth noise around 1 at two scales (patchy pigment of amplitude `pigment` and a finer
    choroidal grain), made small and upsampled once, so it costs one resize rather than per-pixel
    randomness."""
    fine = rng.standard_normal((28, 28)).astype(np.float32)
    coarse = rng.standard_normal((7, 7)).astype(np.float32)
    up = np.asarray(Image.fromarray(coarse).resize((28, 28), Image.Resampling.BICUBIC))
    small = 1.0 + pigment * up + 0.03 * fine
    return np.asarray(Image.fromarray(small.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC))


def _retina(eye: _Eye, rng: np.random.Generator, size: int, rho2: np.ndarray, xs: np.ndarray,
            ys: np.ndarray) -> np.ndarray:
    """The orange-red background (3, H, W): the patient's colour with this photograph's exposure,
    mottled pigment, uneven illumination and the darkening towards the rim that every fundus
    camera shows."""
    exposure = eye.patient.exposure * rng.normal(1.0, 0.04)
    base = np.array(eye.patient.retina, dtype=np.float32) * np.float32(exposure)
    edge = np.minimum(rho2, 1.2)
    shade = 1.0 - np.float32(rng.uniform(0.35, 0.55)) * edge * np.sqrt(edge)
    tilt = rng.normal(0, 0.08, size=2) / eye.radius
    shade *= (1.0 + tilt[0] * (xs - eye.cx)).astype(np.float32) + (tilt[1] * (ys - eye.cy)).astype(np.float32)
    shade *= _mottle(rng, size, eye.patient.pigment)
    return base[:, None, None] * shade[None]


def _window(size: int, centre: _Point, half: float) -> tuple[slice, slice]:
    """Rows and columns within `half` px of `centre`: local features only touch their own pixels."""
    x0, x1 = max(0, int(centre[0] - half)), min(size, int(centre[0] + half) + 2)
    y0, y1 = max(0, int(centre[1] - half)), min(size, int(centre[1] + half) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _optic_disc_and_macula(img: np.ndarray, eye: _Eye, xs: np.ndarray, ys: np.ndarray) -> None:
    """The bright yellowish disc with its paler cup, and the darker macula two disc-widths away."""
    size = img.shape[1]
    rows, cols = _window(size, eye.disc, 2.2 * eye.disc_radius)
    d2 = ((xs[:, cols] - eye.disc[0]) ** 2 + (ys[rows] - eye.disc[1]) ** 2) * np.float32(1 / eye.disc_radius**2)
    disc = np.exp(-(d2 * d2))
    cup = np.exp(d2 * np.float32(-1 / 0.15))
    for c, (disc_c, cup_c) in enumerate(zip(eye.patient.disc_colour, (1.0, 0.93, 0.75))):
        plane = img[c, rows, cols]
        plane += 0.85 * disc * (disc_c - plane)
        plane += 0.35 * cup * (cup_c - plane)
    sigma = 0.16 * eye.radius
    rows, cols = _window(size, eye.macula, 3.5 * sigma)
    m2 = ((xs[:, cols] - eye.macula[0]) ** 2 + (ys[rows] - eye.macula[1]) ** 2) * np.float32(-0.5 / sigma**2)
    img[:, rows, cols] *= (1 - np.float32(eye.patient.macula_depth) * np.exp(m2))[None]


def _absorb(img: np.ndarray, canvas: _Canvas, blur: float, absorbance: _Colour) -> None:
    """Blood and dust darken what they cover (red least, as blood does)."""
    if canvas.used:
        mask = canvas.mask(blur)
        for c, a in enumerate(absorbance):
            img[c] *= 1 - a * mask


def _blend(img: np.ndarray, canvas: _Canvas, blur: float, colour: _Colour, opacity: float) -> None:
    """Exudates and cotton-wool spots lie on top of the retina as pale deposits."""
    if canvas.used:
        alpha = opacity * canvas.mask(blur)
        for c, value in enumerate(colour):
            img[c] += alpha * (value - img[c])


def _finish(img: np.ndarray, eye: _Eye, rng: np.random.Generator, rho2: np.ndarray) -> np.ndarray:
    """Sensor noise, black outside a softly edged circular field stop, to uint8 HWC."""
    inside = np.clip((1 - np.sqrt(rho2)) * np.float32(eye.radius / max(1.0, 0.012 * eye.radius)), 0, 1)
    noise = rng.random(rho2.shape, dtype=np.float32)  # uniform, sd 0.01: normals cost 5x more
    noise -= 0.5
    noise *= np.float32(0.035)
    img += noise[None]
    img *= (inside * 255)[None]
    np.clip(img, 0, 255, out=img)
    img += 0.5
    return np.stack(list(img.astype(np.uint8)), axis=-1)


# ---------------------------------------------------------------- drawing masks


class _Canvas:
    """A grey mask drawn at _SUPERSAMPLE x with Pillow (fast C drawing, no per-pixel Python),
    reduced and blurred into a float coverage map in [0, 1]."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.image = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.used = False

    def blob(self, centre: _Point, a: float, b: float, angle: float, fill: int) -> None:
        """A rotated ellipse with semi-axes a, b (pixels)."""
        t = np.linspace(0, 2 * math.pi, 20, endpoint=False)
        x = a * np.cos(t)
        y = b * np.sin(t)
        c, s = math.cos(angle), math.sin(angle)
        px = (centre[0] + c * x - s * y) * _SUPERSAMPLE
        py = (centre[1] + s * x + c * y) * _SUPERSAMPLE
        self.draw.polygon(list(zip(px.tolist(), py.tolist())), fill=fill)
        self.used = True

    def path(self, points: Sequence[_Point], widths: Sequence[float], fill: int) -> None:
        """A polyline whose width tapers per segment; runs of equal pixel width are drawn as one
        line (few Pillow calls), with round caps where the width changes. Steps turn gently, so
        the joints need no rounding once the mask is reduced and blurred."""
        scaled = [(x * _SUPERSAMPLE, y * _SUPERSAMPLE) for x, y in points]
        pixels = [max(1, round(w * _SUPERSAMPLE)) for w in widths]
        start = 0
        for end in range(1, len(pixels) + 1):
            if end == len(pixels) or pixels[end] != pixels[start]:
                px = pixels[start]
                self.draw.line(scaled[start : end + 1], fill=fill, width=px)
                if px > 2:
                    x, y = scaled[end]
                    r = px / 2
                    self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
                start = end
        self.used = True

    def chord(self, centre: _Point, radius: float, start: float, end: float, fill: int) -> None:
        box = [(centre[0] - radius) * _SUPERSAMPLE, (centre[1] - radius) * _SUPERSAMPLE,
               (centre[0] + radius) * _SUPERSAMPLE, (centre[1] + radius) * _SUPERSAMPLE]
        self.draw.chord(box, start, end, fill=fill)
        self.used = True

    def mask(self, blur: float) -> np.ndarray:
        """Coverage in [0, 1]; a blur under a pixel is a 3x3 kernel, which is half the cost."""
        image = self.image.reduce(_SUPERSAMPLE)
        if blur >= 1.0:
            image = image.filter(ImageFilter.GaussianBlur(blur))
        elif blur > 0.2:
            image = image.filter(ImageFilter.Kernel((3, 3), (1, 2, 1, 2, 4, 2, 1, 2, 1)))
        return np.asarray(image, dtype=np.float32) * np.float32(1 / 255)


# ---------------------------------------------------------------- vessels


def _draw_vessel_tree(canvas: _Canvas, eye: _Eye, rng: np.random.Generator) -> None:
    """Four arcades (vein and artery side by side) leave the optic disc: the temporal pair arches
    round the macula, the nasal pair runs outward; random branches make every tree different,
    the patient's calibre is shared by both eyes."""
    temporal = -eye.side
    for vertical in (-1, 1):
        arcs = (
            (math.atan2(vertical * 1.0, temporal * 0.35), math.atan2(vertical * 0.3, temporal * 1.0), 1.5),
            (math.atan2(vertical * 1.0, -temporal * 0.5), math.atan2(vertical * 0.6, -temporal * 1.0), 0.9),
        )
        for start, target, length in arcs:
            for is_vein, width, offset in ((True, 0.036, 0.0), (False, 0.027, rng.uniform(0.12, 0.3))):
                origin = (eye.disc[0] + rng.normal(0, 0.25) * eye.disc_radius,
                          eye.disc[1] + vertical * rng.uniform(0.0, 0.4) * eye.disc_radius)
                _vessel(canvas, eye, rng, origin, start + vertical * offset, target,
                        length * eye.radius * rng.uniform(0.85, 1.1), width * eye.radius * eye.patient.calibre,
                        fill=255 if is_vein else 170, depth=0)
    for _ in range(rng.integers(1, 4)):  # small macular branches straight towards the fovea
        aim = math.atan2(eye.macula[1] - eye.disc[1], eye.macula[0] - eye.disc[0]) + rng.normal(0, 0.35)
        _vessel(canvas, eye, rng, eye.disc, aim, aim, 0.35 * eye.radius, 0.014 * eye.radius, fill=190, depth=1)


def _vessel(canvas: _Canvas, eye: _Eye, rng: np.random.Generator, start: _Point, angle: float, target: float,
            length: float, width: float, *, fill: int, depth: int) -> None:
    """A vessel as a random walk whose heading relaxes towards `target` (by 12 % a step, plus
    wobble), tapering, branching (two levels at most) and stopping at the rim.

    The heading recurrence is linear, so the whole walk is one convolution and two cumulative
    sums instead of a Python loop per step (which would dominate the cost of an image).
    """
    step = 0.04 * eye.radius
    n = max(2, int(length / step))
    wobble = rng.normal(0, 0.1, n)
    decay = 0.88 ** np.arange(n)
    off = math.atan2(math.sin(target - angle), math.cos(target - angle))
    headings = target - (0.88 * off * decay - np.convolve(wobble, decay)[:n])
    xs = start[0] + step * np.cumsum(np.cos(headings))
    ys = start[1] + step * np.cumsum(np.sin(headings))
    outside = (xs - eye.cx) ** 2 + (ys - eye.cy) ** 2 > (0.98 * eye.radius) ** 2
    m = int(np.argmax(outside)) if outside.any() else n
    widths = width * (1 - 0.55 * np.arange(m) / n)
    if m:
        canvas.path([start, *zip(xs[:m].tolist(), ys[:m].tolist())], widths.tolist(), fill)
    if depth >= 2:
        return
    forks = np.flatnonzero(rng.random(n) < (0.09 if depth == 0 else 0.06))
    forks = forks[(forks > 2) & (forks < m)]
    draws = rng.random((len(forks), 5)).tolist()  # one call: per-call overhead is what costs here
    for k, (side, spread, drift, reach, thin) in zip(forks.tolist(), draws):
        child = float(headings[k]) + (1 if side < 0.5 else -1) * (0.45 + 0.55 * spread)
        _vessel(canvas, eye, rng, (float(xs[k]), float(ys[k])), child, child + 0.6 * (drift - 0.5),
                (n - k) * step * (0.5 + 0.4 * reach), float(widths[k]) * (0.5 + 0.2 * thin),
                fill=fill, depth=depth + 1)


def _draw_neovascular_tuft(canvas: _Canvas, eye: _Eye, rng: np.random.Generator) -> None:
    """Proliferative DR's new vessels: a tangle of fine, tortuous loops on or near the optic disc
    (NVD) or elsewhere along the arcades (NVE); at 64 px it reads as a dark reddish smudge."""
    if rng.random() < 0.45:
        centre = (eye.disc[0] + rng.normal(0, 0.1) * eye.radius, eye.disc[1] + rng.normal(0, 0.1) * eye.radius)
    else:
        centre = _random_point(eye, rng, 0.8)
    spread = eye.radius * rng.uniform(0.1, 0.18)
    for _ in range(rng.integers(12, 22)):
        x = centre[0] + rng.normal(0, spread / 2)
        y = centre[1] + rng.normal(0, spread / 2)
        angle = rng.uniform(0, 2 * math.pi)
        points: list[_Point] = [(x, y)]
        for _ in range(rng.integers(6, 14)):
            angle += rng.normal(0, 0.8)
            x += 0.022 * eye.radius * math.cos(angle)
            y += 0.022 * eye.radius * math.sin(angle)
            points.append((x, y))
        canvas.path(points, [0.011 * eye.radius] * (len(points) - 1), int(rng.integers(170, 240)))


# ---------------------------------------------------------------- lesions


@dataclass(frozen=True)
class _LesionCounts:
    """How many of each lesion one image shows."""

    microaneurysms: int
    haemorrhages: int
    exudate_clusters: int
    cotton_wool: int
    preretinal: int
    dust: int
    drusen: int = 0


def _sample_lesion_counts(grade: int, severity: float, rng: np.random.Generator) -> _LesionCounts:
    """Counts per grade from overlapping Poisson ranges, means times the patient's `severity`
    (so a patient's two eyes are alike in how much they show), mirroring the clinical scale: mild is
    microaneurysms only; moderate adds exudates and some haemorrhages; severe has many
    haemorrhages and cotton-wool spots; proliferative is severe plus new vessels (drawn with the
    vessels) and sometimes a preretinal bleed. Grade 0 may show one stray microaneurysm (graders
    miss some too) or a drusen dot, and dust can be on any photograph, so no single cue is a
    perfect label."""

    def poisson(mean: float, at_least: int = 0) -> int:
        return at_least + int(rng.poisson(mean * severity))

    def chance(p: float) -> int:
        return int(rng.random() < p * severity)

    dust = int(rng.poisson(0.25))  # dust is on the camera and drusen are no DR: neither follows severity
    if grade <= 0:
        return _LesionCounts(chance(0.04), 0, 0, 0, 0, dust, int(rng.poisson(0.1)))
    if grade == 1:
        return _LesionCounts(poisson(3.0, 1), 0, 0, 0, 0, dust, int(rng.poisson(0.1)))
    if grade == 2:
        return _LesionCounts(poisson(6.0, 2), poisson(1.5), poisson(1.3), poisson(0.3), 0, dust)
    if grade == 3:
        return _LesionCounts(poisson(8.0, 3), poisson(6.0, 3), poisson(1.5, 1), poisson(1.5, 1), 0, dust)
    return _LesionCounts(poisson(7.0, 2), poisson(5.0, 2), poisson(1.8), poisson(1.5), chance(0.35), dust)


def _random_point(eye: _Eye, rng: np.random.Generator, reach: float) -> _Point:
    """A uniform point within `reach` x radius of the retina's centre."""
    r = eye.radius * reach * math.sqrt(rng.random())
    t = rng.uniform(0, 2 * math.pi)
    return eye.cx + r * math.cos(t), eye.cy + r * math.sin(t)


def _posterior_point(eye: _Eye, rng: np.random.Generator) -> _Point:
    """Lesions gather around the macula and arcades (the posterior pole) more than at the rim."""
    if rng.random() < 0.6:
        x = eye.macula[0] + rng.normal(0, 0.32) * eye.radius
        y = eye.macula[1] + rng.normal(0, 0.32) * eye.radius
        if (x - eye.cx) ** 2 + (y - eye.cy) ** 2 < (0.9 * eye.radius) ** 2:
            return x, y
    return _random_point(eye, rng, 0.88)


def _draw_lesions(eye: _Eye, rng: np.random.Generator, size: int) -> dict[str, _Canvas]:
    """Red (microaneurysms, haemorrhages, preretinal blood), hard (exudates), soft (cotton wool)
    and dust masks; sizes are fractions of the retina radius so they scale with the image."""
    grade = eye.patient.grade
    counts = _sample_lesion_counts(grade, eye.patient.severity, rng)
    canvases = {kind: _Canvas(size) for kind in ("red", "hard", "soft", "dust")}
    rad = eye.radius
    for _ in range(counts.preretinal):  # first: its flat top is a chord, later blood may overlap it
        centre = _posterior_point(eye, rng)
        tilt = rng.normal(0, 8)
        canvases["red"].chord(centre, rad * rng.uniform(0.13, 0.2), -15 + tilt, 195 + tilt, int(rng.integers(200, 250)))
    for _ in range(counts.microaneurysms):
        r = rad * rng.uniform(0.016, 0.03)
        canvases["red"].blob(_posterior_point(eye, rng), r, r * rng.uniform(0.8, 1.0), 0.0, int(rng.integers(190, 255)))
    for _ in range(counts.haemorrhages):
        _haemorrhage(canvases["red"], eye, rng, severe=grade >= 3)
    for _ in range(counts.exudate_clusters):
        _exudate_cluster(canvases["hard"], eye, rng)
    for _ in range(counts.cotton_wool):
        centre = _random_point(eye, rng, 0.7)
        r = rad * rng.uniform(0.06, 0.11)
        for _ in range(rng.integers(3, 6)):
            offset = (centre[0] + rng.normal(0, r / 3), centre[1] + rng.normal(0, r / 3))
            canvases["soft"].blob(offset, r * rng.uniform(0.5, 0.9), r * rng.uniform(0.3, 0.6),
                                  rng.uniform(0, math.pi), int(rng.integers(140, 220)))
    for _ in range(counts.drusen):  # an innocent yellow dot, so yellow alone does not mean DR
        r = rad * rng.uniform(0.015, 0.03)
        canvases["hard"].blob(_posterior_point(eye, rng), r, r, 0.0, int(rng.integers(150, 220)))
    for _ in range(counts.dust):
        r = rad * rng.uniform(0.02, 0.05)
        canvases["dust"].blob(_random_point(eye, rng, 0.9), r, r, 0.0, int(rng.integers(60, 140)))
    return canvases


def _haemorrhage(canvas: _Canvas, eye: _Eye, rng: np.random.Generator, *, severe: bool) -> None:
    """A blot (a few overlapping ellipses) or a flame (one elongated ellipse); severe grades bleed larger."""
    r = eye.radius * rng.uniform(0.035, 0.09 if severe else 0.06)
    centre = _posterior_point(eye, rng)
    fill = int(rng.integers(170, 240))
    if rng.random() < 0.3:  # flame-shaped, along the nerve fibres (radial from the disc)
        angle = math.atan2(centre[1] - eye.disc[1], centre[0] - eye.disc[0]) + math.pi / 2
        canvas.blob(centre, r * 0.45, r * 1.4, angle, fill)
        return
    for _ in range(rng.integers(2, 5)):
        offset = (centre[0] + rng.normal(0, r / 3), centre[1] + rng.normal(0, r / 3))
        canvas.blob(offset, r * rng.uniform(0.55, 1.0), r * rng.uniform(0.45, 0.9), rng.uniform(0, math.pi), fill)


def _exudate_cluster(canvas: _Canvas, eye: _Eye, rng: np.random.Generator) -> None:
    """Hard exudates come in groups (often a partial ring) of small sharp waxy yellow dots."""
    centre = _posterior_point(eye, rng)
    spread = eye.radius * rng.uniform(0.04, 0.1)
    ring = rng.random() < 0.35
    for _ in range(2 + rng.poisson(5.0)):
        if ring:
            t = rng.uniform(0, 2 * math.pi)
            dist = spread * rng.uniform(0.8, 1.2)
            point = (centre[0] + dist * math.cos(t), centre[1] + dist * math.sin(t))
        else:
            point = (centre[0] + rng.normal(0, spread / 1.5), centre[1] + rng.normal(0, spread / 1.5))
        r = eye.radius * rng.uniform(0.012, 0.032)
        canvas.blob(point, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi), int(rng.integers(190, 255)))
