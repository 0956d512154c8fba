"""docs/writing-a-method.md's Python blocks run, in order, as one script (the example method passes
the conformance kit); its TOML block is the entry point the example package declares."""

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-method.md"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "clipadapt-taskres"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_guides_python_runs_and_its_method_passes_the_kit():
    script = "\n".join(_blocks("python"))
    assert "check_method(ImageBias)" in script
    namespace = {"__name__": "writing_a_method"}
    exec(compile(script, str(GUIDE), "exec"), namespace)
    assert namespace["ImageBias"].name == "image_bias"


def test_the_guides_entry_point_is_the_examples():
    (toml,) = _blocks("toml")
    assert toml.strip().splitlines()[-1] in (EXAMPLE / "pyproject.toml").read_text()
