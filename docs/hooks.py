"""mkdocs hooks: the site's home page is README.md, and it also shows benchmarks/README.md; both live
outside docs/.

The pages link it as `../benchmarks/README.md`, which is right on GitHub and in an editor; mkdocs
only knows files under docs/ and would count that link as broken (and `--strict` fails on it). So
the build adds the file as the generated page `benchmarks.md` and points those links at it: one
source of the benchmark tables, one link spelling in the Markdown.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = {"../benchmarks/README.md": ("benchmarks.md", ROOT / "benchmarks" / "README.md")}


def on_files(files: Files, config) -> Files:
    for page, source in OUTSIDE.values():
        files.append(File.generated(config, page, abs_src_path=str(source)))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=readme.replace("](docs/", "](")))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    for link, (target, _) in OUTSIDE.items():
        markdown = markdown.replace(f"]({link})", f"]({target})")
    return markdown
