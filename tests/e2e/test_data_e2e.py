"""Two processes building the same decode cache at once end with one valid cache (real
subprocesses; the unit half: tests/unit/test_data.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from objectives.data import (
    decode_image,
    find_dataset,
)

from conftest import repo_env


@pytest.mark.slow
def test_two_processes_building_the_same_cache_end_with_one_valid_cache(dr_dir: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    script = (
        "import sys; from pathlib import Path; from objectives.data import find_dataset, decode_all;"
        "f = find_dataset(Path(sys.argv[1]), num_classes=5);"
        "a = decode_all(f.train.paths, 32, cache_dir=Path(sys.argv[2])); print(int(a.sum()))"
    )
    env = repo_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(dr_dir), str(cache)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    sums = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    files = find_dataset(dr_dir, num_classes=5)
    expected = int(np.stack([decode_image(p, 32) for p in files.train.paths]).sum())
    assert sums == [str(expected)] * 2
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob(".*"))
