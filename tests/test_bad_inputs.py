"""Every bad input ends in one `clipadapt: error:` line, exit code 2, no traceback, and no finished work lost.

The table runs in-process (`main([...])`); the few cases that need a real process (DataLoader
workers, the console's exit code) run as subprocesses.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_datasets import make_coop_tree

from clipadapt.cli import main

TINY = ["--backbone", "clipadapt-tiny", "--pretrained", "none"]


def _write_image(path: Path, colour=(200, 30, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, files and a finished run that every bad command is aimed at."""
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    make_coop_tree(str(data), "caltech101")
    w = {"root": root, "data": str(data)}
    # a finished run: every case below that writes uses this folder, which must stay as it is
    done = root / "done"
    assert (
        main(
            [
                "train",
                "--method",
                "zeroshot",
                "--dataset",
                "caltech101",
                "--data-root",
                str(data),
                "--protocol",
                "fewshot",
                "--shots",
                "2",
                "--out",
                str(done),
                *TINY,
            ]
        )
        == 0
    )
    w["done"] = str(done)
    # own-folder datasets with one defect each
    no_test = root / "no_test"
    for c in ("cat", "dog"):
        _write_image(no_test / "train" / c / "a.png")
    w["no_test"] = str(no_test)
    for name, empty in (("empty_first", "aaa"), ("empty_last", "zzz")):
        folder = root / name
        for c in ("cat", "dog"):
            for i in range(3):
                _write_image(folder / c / f"{i}.png")
        (folder / empty).mkdir()
        w[name] = str(folder)
    for name, classes in (("one_class", ("cat",)), ("three_classes", ("cat", "dog", "fox"))):
        for c in classes:  # too few classes for an accuracy to mean anything (issue 24, item 6)
            for i in range(3):
                _write_image(root / name / c / f"{i}.png")
        w[name] = str(root / name)
    mismatch = root / "mismatch"  # test/ has cow where train/ has dog
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "cow"))):
        for c in classes:
            _write_image(mismatch / split / c / "a.png")
    w["mismatch"] = str(mismatch)
    dup = root / "dup_names"
    for c in ("cat", "dog"):
        for i in range(3):
            _write_image(dup / c / f"{i}.png")
    (dup / "classnames.txt").write_text("cat pet\ndog pet\n")
    w["dup_names"] = str(dup)
    # files
    (root / "conf_dir").mkdir()
    (root / "bad.yaml").write_text("lr: 0.1\n  epochs: [3\n")
    (root / "list.yaml").write_text("- lr\n- epochs\n")
    (root / "coop.yaml").write_text("method: coop\n")
    (root / "table_sweep.yaml").write_text(
        "protocol: base2novel\nmethods: [mmrl]\ndatasets: [syn_shapes]\n"
        "dataset_overrides: {mmrl: {dtdd: {reg_weight: 6.0}}}\n"
    )
    (root / "dup_classes.txt").write_text("red\nblue\nred\n")
    (root / "not_image.jpg").write_text("not an image")
    (root / "not_adapter.safetensors").write_text("not safetensors")
    (root / "a_file").write_text("x")
    _write_image(root / "img.png")
    w["img"] = str(root / "img.png")
    # official MMA checkpoints: one without shared_adapter.*, one made for another backbone
    from clipadapt.model import build_model

    tiny = build_model("mma", ["a", "b"], backbone="clipadapt-tiny", pretrained="none")
    state = {k: v for k, v in tiny.method.state_dict().items()}
    torch.save(
        {"state_dict": {k: v for k, v in state.items() if not k.startswith("shared_adapter.")}},
        root / "no_shared.pth.tar",
    )
    torch.save({"state_dict": state}, root / "tiny_mma.pth.tar")
    tiny.save_adapter(str(root / "mma_adapter.safetensors"))
    (root / "classes.py").write_text("import os\nCLASSES = ['a', 'b']\n")
    (root / "empty_classes.txt").write_text("\n\n")
    # sweeps: the finished run as a sweep's run, a sweep file that would run it with other settings, bad files
    import shutil

    shutil.copytree(done, root / "sweep_out" / "fewshot/zeroshot/caltech101/shots2/seed1")
    grid = "protocol: fewshot\nmethods: [zeroshot]\ndatasets: [caltech101]\nbackbone: clipadapt-tiny\npretrained: none\n"
    (root / "changed_sweep.yaml").write_text(
        grid + "seeds: [1]\nshots: [2]\noverrides: {eval_split: val}\n"
    )
    (root / "seeds_text.yaml").write_text(grid + "seeds: [one]\n")
    (root / "shots_text.yaml").write_text(grid + "shots: [x]\n")
    (root / "overrides_list.yaml").write_text(grid + "overrides: [epochs]\n")
    return w


def _snapshot(folder: str) -> dict[str, tuple[str, int]]:
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out[str(path)] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mtime_ns,
            )
    return out


# (id, argv with {placeholders}, fragments the error line must hold)
TRAIN = [
    "train",
    "--method",
    "mma",
    "--dataset",
    "caltech101",
    "--data-root",
    "{data}",
    "--out",
    "{done}",
    *TINY,
    "--config",
    "none",
]
FOLDER = [
    "train",
    "--method",
    "mma",
    "--dataset",
    "folder",
    "--out",
    "{done}",
    *TINY,
    "--config",
    "none",
    "--data-root",
]
EVAL = ["eval", "--dataset", "caltech101", "--data-root", "{data}", "--out", "{done}", *TINY]
PREDICT = ["predict", "{img}", *TINY]
SWEEP = ["sweep", "--out", "{root}/sweep_out", "--data-root", "{data}"]
CASES = [
    # settings: one conversion path, the key, the value and the type named
    ("epochs-text", [*TRAIN, "epochs=abc"], ["epochs", "abc", "integer"]),
    ("epochs-float", [*TRAIN, "epochs=2.5"], ["epochs", "2.5", "integer"]),
    ("adapter_dim-text", [*TRAIN, "adapter_dim=abc"], ["adapter_dim", "abc"]),
    ("scale-text", [*TRAIN, "scale=abc"], ["scale", "abc", "number"]),
    ("lr-negative", [*TRAIN, "lr=-1e-3"], ["lr", "> 0"]),
    ("lr-text", [*TRAIN, "lr=fast"], ["lr", "fast"]),
    ("epochs-zero", [*TRAIN, "epochs=0"], ["epochs", ">= 1"]),
    ("batch_size-zero", [*TRAIN, "batch_size=0"], ["batch_size", ">= 1"]),
    ("eval_batch_size-zero", [*TRAIN, "eval_batch_size=0"], ["eval_batch_size", ">= 1"]),
    ("workers-negative", [*TRAIN, "workers=-1"], ["workers", ">= 0"]),
    ("prefix_cache_mb-negative", [*TRAIN, "prefix_cache_mb=-1"], ["prefix_cache_mb", ">= 0"]),
    ("optimizer-unknown", [*TRAIN, "optimizer=lion"], ["optimizer", "lion", "adamw"]),
    ("precision-unknown", [*TRAIN, "precision=fp8"], ["precision", "fp8"]),
    ("augment-not-bool", [*TRAIN, "augment=maybe"], ["augment", "maybe", "true or false"]),
    ("betas-one-value", [*TRAIN, "betas=0.9"], ["betas", "0.9"]),
    ("momentum-above-1", [*TRAIN, "momentum=1.5"], ["momentum", "1.5"]),
    ("template-without-braces", [*TRAIN, "template=a photo"], ["template", "{{}}"]),
    ("seed-as-setting", [*TRAIN, "seed=3"], ["seed", "--seed"]),
    ("not-key-value", [*TRAIN, "epochs"], ["epochs", "key=value"]),
    ("unknown-setting", [*TRAIN, "bogus=1"], ["bogus", "training settings"]),
    ("overwrite-with-bad-setting", [*TRAIN, "--overwrite", "epochs=abc"], ["epochs"]),
    (
        "info-option-text",
        ["info", "--method", "mma", "--backbone", "clipadapt-tiny", "scale=abc"],
        ["scale"],
    ),
    (
        "info-unknown-option",
        ["info", "--method", "mma", "--backbone", "clipadapt-tiny", "lr=1"],
        ["lr"],
    ),
    (
        "promptsrc-depth-too-deep",
        ["info", "--method", "promptsrc", "--backbone", "clipadapt-tiny", "prompt_depth_text=9"],
        ["prompt_depth_text", "1..4", "9"],
    ),
    (
        "promptsrc-gpa-std-zero",
        ["info", "--method", "promptsrc", "--backbone", "clipadapt-tiny", "gpa_std=0"],
        ["gpa_std", "> 0"],
    ),
    (
        "kgcoop-distance-unknown",
        ["info", "--method", "kgcoop", "--backbone", "clipadapt-tiny", "kg_distance=L1"],
        ["kg_distance", "L1", "cosine"],
    ),
    (
        "kgcoop-weight-negative",
        ["info", "--method", "kgcoop", "--backbone", "clipadapt-tiny", "kg_weight=-1"],
        ["kg_weight", ">= 0"],
    ),
    (
        "kgcoop-knowledge-template-without-braces",
        [
            "info",
            "--method",
            "kgcoop",
            "--backbone",
            "clipadapt-tiny",
            "knowledge_template=a photo",
        ],
        ["knowledge_template", "{{}}"],
    ),
    (
        "cocoop-meta-reduction-zero",
        ["info", "--method", "cocoop", "--backbone", "clipadapt-tiny", "meta_reduction=0"],
        ["meta_reduction", ">= 1"],
    ),
    # config files
    ("config-directory", [*TRAIN, "--config", "{root}/conf_dir"], ["conf_dir", "directory"]),
    (
        "config-malformed",
        [*TRAIN, "--config", "{root}/bad.yaml"],
        ["bad.yaml", "line 2", "mapping values"],
    ),
    (
        "config-missing",
        [*TRAIN, "--config", "{root}/nowhere.yaml"],
        ["nowhere.yaml", "does not exist"],
    ),
    ("config-not-mapping", [*TRAIN, "--config", "{root}/list.yaml"], ["list.yaml", "mapping"]),
    ("config-other-method", [*TRAIN, "--config", "{root}/coop.yaml"], ["coop"]),
    (
        "preset-missing",
        [TRAIN[0], "--method", "mma_attn", *TRAIN[3:-2], "--protocol", "cross_dataset"],
        ["no preset", "mma_attn_cross_dataset.yaml", "--config none"],
    ),
    (
        "prompts-file-missing",
        [*EVAL, "--prompts", "{root}/gone.json"],
        ["prompts file", "gone.json", "does not exist"],
    ),
    (
        "prompts-path-missing",
        [*EVAL, "--prompts", "{root}/cupl"],
        ["prompts file or folder", "cupl", "does not exist"],
    ),
    # flags
    ("shots-zero", [*TRAIN, "--shots", "0"], ["--shots", "-1"]),
    ("shots-negative", [*TRAIN, "--shots", "-3"], ["--shots", "-3"]),
    ("shots-text", [*TRAIN, "--shots", "many"], ["--shots", "many"]),
    ("seed-negative", [*TRAIN, "--seed", "-1"], ["--seed"]),
    ("protocol-unknown", [*TRAIN, "--protocol", "zero"], ["--protocol", "zero"]),
    ("train-batch-size-gone", [*TRAIN, "--batch-size", "8"], ["--batch-size"]),
    ("train-workers-gone", [*TRAIN, "--workers", "2"], ["--workers"]),
    ("eval-batch-size-zero", [*EVAL, "--batch-size", "0"], ["--batch-size", "0"]),
    ("eval-workers-negative", [*EVAL, "--workers", "-1"], ["--workers", "-1"]),
    ("device-unknown", [*EVAL, "--device", "foo"], ["--device", "foo"]),
    ("top-k-negative", [*PREDICT, "--classes", "a,b", "--top-k", "-1"], ["--top-k", "-1"]),
    ("top-k-zero", [*PREDICT, "--classes", "a,b", "--top-k", "0"], ["--top-k"]),
    (
        "import-scale-zero",
        ["import-mma", "{root}/tiny_mma.pth.tar", "--out", "{root}/x.safetensors", "--scale", "-1"],
        ["--scale"],
    ),
    # data
    ("folder-without-test", [*FOLDER, "{no_test}"], ["no_test", "test/"]),
    ("folder-empty-class-first", [*FOLDER, "{empty_first}"], ["aaa", "no images"]),
    ("folder-empty-class-last", [*FOLDER, "{empty_last}"], ["zzz", "no images"]),
    ("folder-duplicate-names", [*FOLDER, "{dup_names}"], ["pet", "more than once"]),
    (
        "folder-one-class",
        [*FOLDER, "{one_class}"],
        ["one_class", "test split", "1 class", "measures nothing"],
    ),
    (
        "folder-base2novel-one-novel-class",
        [*FOLDER, "{three_classes}", "--protocol", "base2novel"],
        ["three_classes", "novel half (base:new 1:1) has 1 class (fox)", "--protocol fewshot"],
    ),
    (
        "eval-one-class",
        ["eval", "--dataset", "folder", "--data-root", "{one_class}", "--out", "{done}", *TINY],
        ["one_class", "1 class"],
    ),
    (
        "eval-subsample-new-too-few",
        [
            "eval",
            "--dataset",
            "folder",
            "--data-root",
            "{three_classes}",
            "--out",
            "{done}",
            "--subsample",
            "new",
            *TINY,
        ],
        ["novel half", "1 class (fox)"],
    ),
    (
        "folder-train-test-classes-differ",
        [*FOLDER, "{mismatch}"],
        ["train/ and test/ hold different classes", "only in train/: dog", "only in test/: cow"],
    ),
    (
        "datasets-unknown",
        ["datasets", "--data-root", "{data}", "--dataset", "syn_shape"],
        ["syn_shape", "'syn_shapes'"],
    ),
    ("dataset-unknown", [*EVAL[:2], "mnist", *EVAL[3:]], ["mnist", "caltech101"]),
    ("data-root-missing", [*TRAIN[:6], "{root}/nowhere", *TRAIN[7:]], ["nowhere"]),
    ("method-unknown", [*TRAIN[:2], "magic", *TRAIN[3:]], ["magic", "zeroshot"]),
    ("eval-trainable-without-checkpoint", [*EVAL, "--method", "mma"], ["mma", "--checkpoint"]),
    (
        "eval-checkpoint-missing",
        [*EVAL, "--checkpoint", "{root}/none.safetensors"],
        ["none.safetensors"],
    ),
    (
        "eval-checkpoint-corrupt",
        [*EVAL, "--checkpoint", "{root}/not_adapter.safetensors"],
        ["not_adapter"],
    ),
    # predict
    ("classes-duplicate", [*PREDICT, "--classes", "a,a,b"], ["a", "more than once"]),
    (
        "classes-file-duplicate",
        [*PREDICT, "--classes-file", "{root}/dup_classes.txt"],
        ["red", "more than once"],
    ),
    ("classes-one", [*PREDICT, "--classes", "a"], ["two class names"]),
    (
        "classes-file-is-code",
        [*PREDICT, "--classes-file", "{root}/classes.py"],
        ["classes.py", "line 1", "one class"],
    ),
    (
        "classes-file-empty",
        [*PREDICT, "--classes-file", "{root}/empty_classes.txt"],
        ["empty_classes.txt", "empty"],
    ),
    (
        "classes-and-classes-file",
        [*PREDICT, "--classes", "a,b", "--classes-file", "{root}/dup_classes.txt"],
        ["--classes", "--classes-file"],
    ),
    (
        "eval-method-contradicts-checkpoint",
        [*EVAL, "--method", "coop", "--checkpoint", "{root}/mma_adapter.safetensors"],
        ["coop", "'mma'", "--method"],
    ),
    (
        "feature-cache-both",
        [*EVAL, "--feature-cache", "{root}/fc", "--no-feature-cache"],
        ["--feature-cache", "--no-feature-cache"],
    ),
    ("classes-none", [*PREDICT], ["--classes"]),
    ("image-missing", ["predict", "{root}/gone.jpg", "--classes", "a,b", *TINY], ["gone.jpg"]),
    (
        "image-is-a-folder",
        ["predict", "{root}/conf_dir", "--classes", "a,b", *TINY],
        ["conf_dir", "is a folder"],
    ),
    (
        "image-corrupt",
        ["predict", "{root}/not_image.jpg", "--classes", "a,b", *TINY],
        ["not_image.jpg"],
    ),
    # outputs
    ("out-is-a-file", [*EVAL[:5], "--out", "{root}/a_file", *TINY], ["a_file", "is a file"]),
    ("out-below-a-file", [*EVAL[:5], "--out", "{root}/a_file/run", *TINY], ["a_file", "writable"]),
    (
        "import-out-is-dir",
        [
            "import-mma",
            "{root}/tiny_mma.pth.tar",
            "--out",
            "{done}",
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
        ],
        ["directory"],
    ),
    # import-mma
    (
        "import-no-shared-keys",
        [
            "import-mma",
            "{root}/no_shared.pth.tar",
            "--out",
            "{root}/x.safetensors",
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
        ],
        ["shared_adapter"],
    ),
    (
        "import-other-backbone",
        [
            "import-mma",
            "{root}/tiny_mma.pth.tar",
            "--out",
            "{root}/x.safetensors",
            "--backbone",
            "synthetic",
            "--pretrained",
            "none",
        ],
        ["tiny_mma.pth.tar"],
    ),
    (
        "import-missing",
        ["import-mma", "{root}/gone.pth.tar", "--out", "{root}/x.safetensors"],
        ["gone.pth.tar"],
    ),
    # sweeps
    (
        "sweep-settings-changed",
        [*SWEEP, "{root}/changed_sweep.yaml"],
        ["fewshot/zeroshot/caltech101/shots2/seed1", "eval_split", "--rerun-changed"],
    ),
    (
        "sweep-seeds-text",
        [*SWEEP, "{root}/seeds_text.yaml"],
        ["seeds_text.yaml", "'seeds'", "'one'"],
    ),
    ("sweep-shots-text", [*SWEEP, "{root}/shots_text.yaml"], ["shots_text.yaml", "'shots'", "'x'"]),
    (
        "sweep-overrides-not-mapping",
        [*SWEEP, "{root}/overrides_list.yaml"],
        ["overrides_list.yaml", "'overrides'"],
    ),
    # import --method
    (
        "import-method-unknown",
        ["import", "--method", "mmx", "{root}/tiny_mma.pth.tar", "--out", "{root}/x.safetensors"],
        ["mmx", "mma", "maple", "clip_lora", "coop"],
    ),
    (
        "import-method-without-reader",
        [
            "import",
            "--method",
            "rmadapter",
            "{root}/tiny_mma.pth.tar",
            "--out",
            "{root}/x.safetensors",
        ],
        ["rmadapter", "import for", "mmrl"],
    ),
    (
        "import-method-missing-file",
        [
            "import",
            "--method",
            "maple",
            "{root}/gone.pth.tar",
            "--out",
            "{root}/x.safetensors",
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
        ],
        ["MaPLe", "gone.pth.tar", "does not exist"],
    ),
    (
        "import-method-wrong-checkpoint",
        [
            "import",
            "--method",
            "maple",
            "{root}/tiny_mma.pth.tar",
            "--out",
            "{root}/x.safetensors",
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
        ],
        ["tiny_mma.pth.tar", "prompt_learner.ctx"],
    ),
    (
        "import-method-unknown-option",
        [
            "import",
            "--method",
            "coop",
            "{root}/tiny_mma.pth.tar",
            "--out",
            "{root}/x.safetensors",
            "scale=0.5",
        ],
        ["coop", "scale"],
    ),
    (
        "import-lora-missing-file",
        [
            "import",
            "--method",
            "clip_lora",
            "{root}/gone.pt",
            "--out",
            "{root}/x.safetensors",
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
        ],
        ["CLIP-LoRA", "gone.pt"],
    ),
    (
        "import-lora-not-lora",
        [
            "import",
            "--method",
            "clip_lora",
            "{root}/tiny_mma.pth.tar",
            "--out",
            "{root}/x.safetensors",
            "--backbone",
            "clipadapt-tiny",
            "--pretrained",
            "none",
        ],
        ["tiny_mma.pth.tar", "save_lora"],
    ),
    (
        "sweep-table-names-no-dataset",
        ["sweep", "{root}/table_sweep.yaml", "--out", "{root}/sw", "--dry-run"],
        ["dataset_overrides", "'dtdd'", "not a dataset", "did you mean 'dtd'"],
    ),
    # export and adapters as folders or Hub ids (no network: refused before any lookup)
    (
        "export-run-missing",
        ["export", "{root}/nowhere", "--out", "{root}/exported"],
        ["nowhere", "does not exist"],
    ),
    (
        "export-unfinished-run",
        ["export", "{no_test}", "--out", "{root}/exported"],
        ["no_test", "not a finished training run"],
    ),
    (
        "checkpoint-folder-without-adapter",
        [*EVAL, "--checkpoint", "{no_test}"],
        ["no_test", "adapter.safetensors"],
    ),
    (
        "checkpoint-bad-hub-id",
        [*EVAL, "--checkpoint", "hf-hub:not a repo"],
        ["not a repo", "Hub model id"],
    ),
    # backbones
    (
        "backbone-unknown",
        [*EVAL[:-4], "--backbone", "ViT-Q-99", "--pretrained", "none"],
        ["ViT-Q-99"],
    ),
    (
        "pretrained-unknown-tag",
        [*EVAL[:-4], "--backbone", "ViT-B-16", "--pretrained", "nonsense"],
        ["nonsense"],
    ),
    (
        "synthetic-weights-missing",
        [*EVAL[:-4], "--backbone", "synthetic", "--pretrained", "{root}/w.safetensors"],
        ["w.safetensors"],
    ),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(world, capsys, argv, fragments):
    before = _snapshot(world["done"])
    argv = [a.format(**world) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("clipadapt: error:")]
    assert code == 2, captured.err
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    for fragment in fragments:
        assert fragment.format(**world) in errors[0], errors[0]
    assert _snapshot(world["done"]) == before  # the finished run is untouched


def test_slurm_off_a_cluster(world, tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    before = _snapshot(str(world["root"] / "sweep_out"))
    out = world["root"] / "slurm_out"
    argv = [*SWEEP[:2], str(out), *SWEEP[3:], str(world["root"] / "changed_sweep.yaml")]
    assert main([a.format(**world) for a in argv] + ["--launcher", "slurm", "--rerun-changed"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "no SLURM" in errors[0] and "sbatch" in errors[0], errors
    assert not out.exists() and _snapshot(str(world["root"] / "sweep_out")) == before


def test_cuda_without_a_gpu(world, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(
        [
            "eval",
            "--dataset",
            "caltech101",
            "--data-root",
            world["data"],
            "--out",
            str(world["root"] / "cuda"),
            *TINY,
            "--device",
            "cuda",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.count("clipadapt: error:") == 1
        and "cuda" in err
        and "not available" in err
    )


def test_unreadable_image_survives_dataloader_workers(world, tmp_path, capsys):
    folder = tmp_path / "imgs"
    for c in ("cat", "dog"):
        for i in range(5):
            _write_image(folder / c / f"{i}.png")
    broken = (
        folder / "dog" / "0.png"
    )  # sorted and split 80/20 by a fixed seed: some image of each class is tested
    for path in (folder / "dog").iterdir():
        path.write_bytes(b"not an image")
    # In-process: the DataLoader's workers are real processes all the same.
    code = main(
        [
            "eval",
            "--dataset",
            "folder",
            "--data-root",
            str(folder),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "2",
            *TINY,
        ]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("clipadapt: error:")]
    assert code == 2 and len(errors) == 1, err
    assert "Traceback" not in err and "Original" not in errors[0]
    assert str(broken.parent) in errors[0] and "cannot read image" in errors[0], errors[0]
    assert (
        errors[0].rstrip().endswith("UnidentifiedImageError")
    )  # the whole line survived, not a fragment
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.slow
def test_console_exit_code_and_no_traceback(world):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipadapt.cli",
            "train",
            "--method",
            "mma",
            "--dataset",
            "caltech101",
            "--data-root",
            world["data"],
            "--out",
            world["done"],
            *TINY,
            "--config",
            "none",
            "lr=abc",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        line for line in out.stderr.strip().splitlines() if line.startswith("clipadapt: error:")
    ]
    assert "'lr'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "flags, line",
    [
        (["--method", "MMA"], "unknown method 'MMA' (did you mean 'mma'?)"),
        (
            ["--method", "mma", "--dataset", "euroset"],
            "unknown dataset 'euroset' (did you mean 'eurosat'?)",
        ),
        (
            ["--method", "mma", "--backbone", "ViT-B/16"],
            "unknown backbone 'ViT-B/16' (did you mean 'ViT-B-16'?)",
        ),
        (
            ["--method", "mma", "--backbone", "ViT-B-16", "--pretrained", "openia"],
            "(did you mean 'openai'?)",
        ),
        (
            ["--method", "mma", "--backbone", "no-such-model", "--config", "none"],
            "unknown backbone 'no-such-model' (",
        ),
    ],
)
def test_a_typo_in_a_name_says_the_closest_names_in_one_short_line(
    fake_root, tmp_path, capsys, flags, line
):
    args = ["train", "--data-root", fake_root, "--out", str(tmp_path / "run"), *flags]
    if "--dataset" not in flags:
        args += ["--dataset", "eurosat"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0] and len(err[0]) < 200 and "preset" not in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_mistyped_method_is_refused_before_torch_is_imported(fake_root, tmp_path):
    code = (
        "import sys; from clipadapt.cli import main; "
        f"code = main(['train', '--method', 'MMA', '--dataset', 'eurosat', '--data-root', {fake_root!r}, "
        f"'--out', {str(tmp_path / 'run')!r}]); print(code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr
