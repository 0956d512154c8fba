"""Every shell and Python example of README.md runs as written, except the blocks marked as needing more.

A block is excluded by the line `<!-- readme-test: skip: REASON -->` right above its fence; the
excluded blocks are listed in SKIPPED below, so that excluding one more is a visible change here.
Every `clipadapt` command of every block, run or not, must parse with the command line's parser.
"""

from __future__ import annotations

import random
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from clipadapt.cli import build_parser, main, parse_command_line

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = re.compile(r"<!-- readme-test: skip: (.+?) -->")
EXAMPLE_LANGUAGES = ("bash", "python")
COMMAND_STARTS = ("clipadapt ", "pip ", "make ", "python ", "torchrun ")

# The first line of each block that needs real weights, real data, an install or an hour.
SKIPPED = {
    "pip install .    # or `pip install -e '.[test]'` in a checkout; Python 3.11+",
    "make demo    # the whole job on generated data, no download (creates .venv on first use)",
    "# zero-shot CLIP on the novel half of a CoOp dataset",
    "clipadapt train --method mma --dataset dtd --data-root ~/data \\",
    "clipadapt train --method mma_pp --config mma_pp_base2novel.yaml --prompts ~/cupl \\",
    "clipadapt pretrain-synthetic --out runs/pretrain --install     # remake the shipped weights (51 min on 2 cores)",
    "clipadapt datasets --data-root ~/data        # which datasets are complete; the exact missing files and their sources",
    "clipadapt sweep configs/sweeps/studies/rmma_ablation.yaml --out runs/studies --data-root ~/data --jobs 4",
    "clipadapt train --method mma --dataset folder --data-root photos --backbone ViT-B-16 --pretrained openai --out runs/mine-vit",
    "python3 -m venv .venv",
    "tensorboard --logdir runs/    # every run's curves side by side",
    "import clipadapt  # the same loading as --checkpoint",
}


@dataclass
class Block:
    """One fenced block of the README: its language, its text, its first line number and why it is skipped."""

    language: str
    text: str
    line: int
    skip: str | None

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]


def readme_blocks() -> list[Block]:
    """The README's fenced blocks, in order."""
    blocks, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, language = i, lines[i][3:].strip()
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            above = next((line for line in reversed(lines[:start]) if line.strip()), "")
            mark = SKIP_MARK.fullmatch(above.strip())
            blocks.append(
                Block(
                    language,
                    "\n".join(lines[start + 1 : i]) + "\n",
                    start + 1,
                    mark and mark.group(1),
                )
            )
        i += 1
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """A shell block's commands as argument lists: continuations joined, comments dropped."""
    return [
        words
        for words in (
            shlex.split(line, comments=True) for line in text.replace("\\\n", " ").splitlines()
        )
        if words
    ]


def examples() -> list[Block]:
    return [b for b in readme_blocks() if b.language in EXAMPLE_LANGUAGES]


def test_every_command_block_is_an_example_and_the_skipped_ones_are_listed():
    for block in readme_blocks():
        if block.language not in EXAMPLE_LANGUAGES:  # tables, layouts: no line may be a command
            assert not any(line.startswith(COMMAND_STARTS) for line in block.text.splitlines()), (
                block.line
            )
    assert {b.first_line for b in examples() if b.skip} == SKIPPED
    runnable = [b for b in examples() if not b.skip]
    assert {b.language for b in runnable} == {
        "bash",
        "python",
    }  # the own-folder path and the Python snippet run


def test_every_clipadapt_command_parses():
    parser = build_parser()
    checked = 0
    for block in examples():
        if block.language != "bash":
            continue
        for words in shell_commands(block.text):
            if (
                words[0] != "clipadapt" or "..." in words
            ):  # `clipadapt train ... lr=0.002`: a placeholder
                continue
            try:
                parse_command_line(parser, words[1:])  # import-NAME has a parser of its own
            except SystemExit as err:
                pytest.fail(
                    f"README line {block.line}: {shlex.join(words)} does not parse ({err.code})"
                )
            checked += 1
    assert checked >= 20


def _sandbox(root: Path) -> None:
    """What the runnable examples expect in their folder: `photos/<class>/` of generated images and `photo.jpg`."""
    from PIL import Image

    from clipadapt.synthetic.render import random_scene, render

    rng = random.Random(0)
    for shape in ("circle", "square", "star"):
        (root / "photos" / shape).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(render(random_scene(rng, shape=shape))).save(
                root / "photos" / shape / f"{i}.png"
            )
    Image.fromarray(render(random_scene(rng, shape="star"))).save(root / "photo.jpg")


def _runnable() -> list:
    return [
        pytest.param(
            b,
            id=f"{b.language}-line{b.line}",
            marks=[pytest.mark.slow] if b.language == "bash" else [],
        )
        for b in examples()
        if not b.skip
    ]


@pytest.mark.parametrize("block", _runnable())
def test_example_runs_as_written(block, tmp_path, monkeypatch):
    _sandbox(tmp_path)
    monkeypatch.chdir(tmp_path)
    if block.language == "python":
        exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "readme_example"})
        return
    for words in shell_commands(block.text):
        assert words[0] == "clipadapt", (
            f"README line {block.line}: only clipadapt commands run here: {words}"
        )
        assert main(words[1:]) == 0, shlex.join(words)


def _demo_md_tables() -> dict[str, dict[str, list[str]]]:
    """docs/demo.md's base-to-novel tables: {'Average' or dataset: {method: [base, novel, HM]}}."""
    tables, current = {}, None
    for line in (README.parent / "docs" / "demo.md").read_text().splitlines():
        title = re.fullmatch(r"\*\*(.+)\*\*", line.strip())
        if line.startswith("## "):  # a new section (the cost table follows the accuracy tables)
            current = None
        elif title:
            current = tables.setdefault(title.group(1), {})
        elif (
            current is not None
            and line.startswith("| ")
            and not line.startswith(("| method", "| ---"))
        ):
            cells = [c.strip() for c in line.strip("|").split("|")]
            current[cells[0]] = [c.split(" ")[0] for c in cells[1:4]]  # "74.66 ± 0.5" -> "74.66"
    return tables


def test_the_readme_table_is_the_committed_demo_report():
    block = next(b for b in readme_blocks() if b.text.startswith("method ") and "avg HM" in b.text)
    header, *rows = [line.split() for line in block.text.splitlines()]
    datasets = [f"syn_{name}" for name in header[1:7]]
    tables = _demo_md_tables()
    assert len(rows) == len(tables["Average"]) >= 2
    for method, *numbers in rows:
        assert numbers[:6] == [tables[d][method][2] for d in datasets], method  # HM per dataset
        assert numbers[6:] == tables["Average"][method], method  # avg base, avg novel, avg HM


def test_the_parameter_table_is_what_clipadapt_info_counts():
    from clipadapt.backbone import load_backbone
    from clipadapt.registry import METHOD_NAMES
    from clipadapt.run import method_info

    text = README.read_text()
    table = text[text.index("## Methods") : text.index("## Datasets")]
    rows = {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in re.finditer(r"^\| `(\w+)` \|.*\| ([\d,]+) \|$", table, flags=re.M)
    }
    assert set(rows) == set(METHOD_NAMES)
    vit = load_backbone(
        "ViT-B-16", "none"
    )  # the architecture the table is for; one build for every method
    for method, count in rows.items():
        assert method_info(method, vit)["trainable_params"] == count, method
