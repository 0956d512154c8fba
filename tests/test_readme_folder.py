"""The README has an explicit own-folder example (it runs, with the other README blocks, in tests/test_readme.py)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def folder_example() -> list[str]:
    """The commands of the README's bash block that trains on `--dataset folder`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    block = next(b for b in blocks if "--dataset folder" in b)
    return [
        line.split("#")[0].strip()
        for line in block.splitlines()
        if line.strip().startswith("clipadapt ")
    ]


def test_the_readme_has_an_explicit_folder_example():
    commands = folder_example()
    assert any("--protocol fewshot" in c for c in commands) and any(
        c.startswith("clipadapt predict") for c in commands
    )
