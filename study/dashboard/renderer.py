"""The trial pages' figure renderer: a small child process that draws PNGs for the training process.

`python -m study.dashboard.renderer` reads length-prefixed pickled requests ``(kind, page_fields)`` on stdin
and answers each with a length-prefixed PNG (or a one-line error) on stdout. It imports only
matplotlib and numpy (`study.figures`), so it starts in well under a second and, being another
process, never holds the training process's GIL.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
from collections.abc import Mapping
from typing import IO, Any

HEADER = struct.Struct("<?Q")  # ok flag, payload length


def send(stream: IO[bytes], ok: bool, payload: bytes) -> None:
    stream.write(HEADER.pack(ok, len(payload)))
    stream.write(payload)
    stream.flush()


def receive(stream: IO[bytes]) -> tuple[bool, bytes] | None:
    """One message, or None at the end of the stream."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    ok, size = HEADER.unpack(head)
    return ok, stream.read(size)


def render(kind: str, page: Mapping[str, Any]) -> bytes:
    """The PNG of one of a trial's figures: "curves" or "confusion"."""
    from study import figures

    buffer = io.BytesIO()
    if kind == "curves":
        line = figures.Curve(f"trial {page['number']}", page["curves"], page["state"] == "PRUNED")
        figures.curves_figure([line], page["metric"], buffer)
    else:
        figures.confusion_figure(page["confusion"] or [], page["class_names"],
                                 f"trial {page['number']}: test confusion (row-normalised)", buffer)
    return buffer.getvalue()


def main() -> None:
    try:
        os.nice(19)  # yield the cores to training
    except OSError:
        pass
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while (message := receive(source)) is not None:
        try:
            kind, page = pickle.loads(message[1])
            send(sink, True, render(kind, page))
        except Exception as exc:  # noqa: BLE001 - one bad figure must not end the renderer
            send(sink, False, f"{type(exc).__name__}: {exc}".encode())


if __name__ == "__main__":
    main()
