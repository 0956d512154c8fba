"""The few-shot synthetic MMA preset chosen on validation folders (never the test folders).

Draws random trios of shapes (leaving out the trio tests/test_newcomer.py scores), renders an own
folder for each (`train/<shape>/` with 6 images, `test/<shape>/` with 20 held-out ones, which here
play the validation split), and scores zero-shot CLIP and `clipadapt train --method mma --dataset
folder --protocol fewshot --shots 6` under each candidate setting on the held-out images. Prints one
JSON line per trio (docs/methods.md, "Synthetic presets", has the table of the run that chose it).

    python studies/mma_fewshot_validation.py --out /tmp/fewshot-validation [--trios 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
from pathlib import Path

from PIL import Image

from clipadapt.cli import main
from clipadapt.synthetic.render import SHAPES, random_scene, render

TEST_TRIO = {"star", "cross", "diamond"}
CANDIDATES = {
    "preset(b16,e20)": ["--config", "synthetic/mma.yaml"],
    "b4,e20": ["--config", "synthetic/mma.yaml", "batch_size=4"],
    "b8,e40": ["--config", "synthetic/mma.yaml", "batch_size=8", "epochs=40"],
    "b4,e40": ["--config", "synthetic/mma.yaml", "batch_size=4", "epochs=40"],
    "b4,e20,lr.005": ["--config", "synthetic/mma.yaml", "batch_size=4", "lr=0.005"],
}


def render_folder(
    root: Path, shapes: tuple[str, ...], seed: int, train: int = 6, held_out: int = 20
) -> Path:
    """`root/{train,test}/<shape>/*.png` drawn by the synthetic renderer."""
    rng = random.Random(seed)
    for shape in shapes:
        for split, count in (("train", train), ("test", held_out)):
            (root / split / shape).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(render(random_scene(rng, shape=shape))).save(
                    root / split / shape / f"{i}.png"
                )
    return root


def accuracy(argv: list[str], out: Path) -> float:
    """Run one clipadapt command quietly and return its accuracy."""
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(io.StringIO()):
        if main([*argv, "--out", str(out), "--overwrite"]) != 0:
            raise SystemExit(log.getvalue()[-2000:])
    return json.loads((out / "metrics.json").read_text())["accuracy"]


def main_study() -> None:
    """Score every candidate on every validation trio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder for the rendered folders and the runs")
    parser.add_argument("--trios", type=int, default=8)
    args = parser.parse_args()
    out, rng, trios = Path(args.out), random.Random(7), []
    while len(trios) < args.trios:
        trio = tuple(sorted(rng.sample(SHAPES, 3)))
        if trio not in trios and set(trio) != TEST_TRIO:
            trios.append(trio)
    for i, trio in enumerate(trios):
        folder = render_folder(out / "_".join(trio), trio, 100 + i)
        row = {
            "zs": accuracy(
                ["eval", "--method", "zeroshot", "--dataset", "folder", "--data-root", str(folder)],
                out / "runs" / "zeroshot",
            )
        }
        for name, extra in CANDIDATES.items():
            row[name] = accuracy(
                [
                    "train",
                    "--method",
                    "mma",
                    "--dataset",
                    "folder",
                    "--data-root",
                    str(folder),
                    "--protocol",
                    "fewshot",
                    "--shots",
                    "6",
                    *extra,
                    "workers=0",
                ],
                out / "runs" / "mma",
            )
        print(json.dumps({"trio": trio, **row}), flush=True)


if __name__ == "__main__":
    main_study()
