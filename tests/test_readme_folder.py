"""The README's own-folder example runs as written (with a generated folder of images)."""

from __future__ import annotations

import random
import re
import shlex
from pathlib import Path

import pytest

from clipadapt.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def folder_example() -> list[str]:
    """The commands of the README's bash block that trains on `--dataset folder`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    block = next(b for b in blocks if "--dataset folder" in b)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip().startswith("clipadapt ")]


def test_the_readme_has_an_explicit_folder_example():
    commands = folder_example()
    assert any("--protocol fewshot" in c for c in commands) and any(c.startswith("clipadapt predict") for c in commands)


@pytest.mark.slow
def test_the_readme_folder_example_runs(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from clipadapt.synthetic.render import random_scene, render

    rng = random.Random(0)
    for shape in ("circle", "square", "star"):
        (tmp_path / "photos" / shape).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(render(random_scene(rng, shape=shape))).save(tmp_path / "photos" / shape / f"{i}.png")
    Image.fromarray(render(random_scene(rng, shape="star"))).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    for command in folder_example():
        assert main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert "photo.jpg:" in out and all(c in out for c in ("circle", "square", "star"))
