"""`RunOptions`: everything a run was asked for, frozen and explicit, and its JSON form, which is
how the parent of `--workers N` hands the same run to each worker process."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import storage
from study.spaces.space import SearchSpace
from study.spaces.space_file import load_space, load_space_text

CHECKPOINT_EVERY_S = 60.0  # mid-trial checkpoints at most this often (see `objectives.train.Checkpointing`)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunOptions:
    """What `run` (or `ablate`, with `space` None: it trains the parent study's space) was asked
    for. `threads`, `worker` and `worker_gpus` are set by the parent of `--workers N` for its
    workers: this process's torch threads, its index, and each worker's CUDA_VISIBLE_DEVICES."""

    space: SearchSpace | None = None
    objective: str | None = None  # --objective: the module of the user's own a stored study may import
    results_dir: Path = Path("results")
    study_name: str | None = None
    storage_url: str | None = None
    data: Path | None = None
    layout: str | None = None  # forced data layout; None detects it
    trials: int | None = None
    timeout: float | None = None
    device: str = "auto"
    pruner: str | None = None
    cache: bool = True
    allow_space_change: bool = False
    workers: int = 1
    heartbeat: int = storage.HEARTBEAT_SECONDS
    checkpoint_every: float = CHECKPOINT_EVERY_S
    compile: bool = False
    trial_pages: bool = True  # each trial's dashboard figures and note (off: benchmarks/overhead.py's baseline)
    threads: int | None = None
    worker: int | None = None
    worker_gpus: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The options as JSON; the space as its file, name and pins (a worker reads the file)."""
        doc: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.space is not None:
            # the text too: a space resumed from a study's record may have no file on this machine
            doc["space"] = {"file": str(self.space.path), "name": self.space.name, "text": self.space.text,
                            "direction": self.space.study.direction,
                            "fixed": dict(self.space.fixed), "pins": dict(self.space.pinned)}
        for key in ("results_dir", "data"):
            doc[key] = None if doc[key] is None else str(doc[key])
        doc["worker_gpus"] = list(self.worker_gpus)
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunOptions:
        doc = json.loads(text)
        space = doc.pop("space")
        if space is not None:
            if space.get("text"):
                # as the parent parsed it (a stored space keeps the direction its study ran with)
                loaded = load_space_text(space["text"], Path(space["file"]), space["name"],
                                         direction=space.get("direction"), stored=True)
            else:
                loaded = load_space(Path(space["file"]), space["name"])
            loaded = loaded.with_settings(**{k: v for k, v in space.get("fixed", {}).items() if k in loaded.fixed})
            for name, value in space["pins"].items():
                loaded = loaded.pin(name, value)
            space = loaded
        for key in ("results_dir", "data"):
            doc[key] = None if doc[key] is None else Path(doc[key])
        return cls(space=space, **{**doc, "worker_gpus": tuple(doc["worker_gpus"])})
