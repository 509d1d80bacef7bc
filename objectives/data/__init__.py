"""Datasets: the layouts a user brings, the decode-once image cache, grouped splits and device batches.

One module per step a dataset goes through: `layouts` finds and reads a ``--data`` folder (or an
embedded dataset, `embedded`) into image tables (`types`) and checks them; `decode` decodes and
resizes every image once into a memory-mapped cache; `splits` carves grouped, stratified, seeded
splits and records them in a manifest; `batches` turns rows into augmented, normalised batches on
the training device; `inspect` reads a folder image by image and lists what is wrong with it.
The public names are re-exported here.
"""

from objectives.data.batches import Augment, DeviceBatches
from objectives.data.decode import (
    CACHE_VERSION,
    cached_channel_stats,
    channel_stats,
    content_hash,
    content_key,
    decode_all,
    decode_files,
    decode_image,
    decode_table,
    decode_table_hashed,
    fit_square,
    for_each,
    moments,
    open_rgb,
    pixels_key,
    resize_all,
)
from objectives.data.embedded import EMBEDDED, Embedded, embedded_root, ensure_embedded
from objectives.data.inspect import ImageFacts, Inspection, inspect_dataset, render
from objectives.data.layouts import (
    DR_CLASS_NAMES,
    LAYOUTS,
    Layout,
    check_classes,
    detect_layout,
    find_dataset,
    image_extensions,
    read_dataset,
    table_problems,
)
from objectives.data.splits import (
    TEST_SPLIT_SEED,
    group_ids,
    grouped_split,
    load_splits,
    split_manifest,
    stratified_split,
)
from objectives.data.types import (
    AUTO,
    NO_GROUPS,
    DatasetFiles,
    ImageSet,
    ImageTable,
    Manifest,
    Problem,
    Splits,
    file_table,
)

__all__ = [
    "AUTO", "CACHE_VERSION", "DR_CLASS_NAMES", "EMBEDDED", "LAYOUTS", "NO_GROUPS", "TEST_SPLIT_SEED",
    "Augment", "DatasetFiles", "DeviceBatches", "Embedded", "ImageFacts", "ImageSet", "ImageTable", "Inspection",
    "Layout", "Manifest", "Problem", "Splits",
    "cached_channel_stats", "channel_stats", "check_classes", "content_hash", "content_key", "decode_all",
    "decode_files", "decode_image", "decode_table_hashed",
    "decode_table", "detect_layout", "embedded_root", "ensure_embedded", "file_table", "find_dataset", "fit_square",
    "for_each",
    "group_ids", "grouped_split", "image_extensions", "inspect_dataset", "load_splits", "moments", "open_rgb",
    "pixels_key", "read_dataset", "render", "resize_all", "split_manifest", "stratified_split", "table_problems",
]
