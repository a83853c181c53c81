"""Where every benchmark leaves its result: the Markdown file (folders made as needed) and the console."""

from __future__ import annotations

from pathlib import Path


def write_result(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
