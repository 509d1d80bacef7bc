"""`write`: a search-space file from TOML text, for the space and endpoint tests."""

import textwrap
from pathlib import Path


def write(tmp_path: Path, text: str) -> Path:
    """TOML text (dedented, so a test can indent it) as the space file s.toml."""
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(text))
    return path
