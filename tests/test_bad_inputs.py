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

from clipadapt.cli import main
from fake_datasets import make_coop_tree

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
    assert main(["train", "--method", "zeroshot", "--dataset", "caltech101", "--data-root", str(data),
                 "--protocol", "fewshot", "--shots", "2", "--out", str(done), *TINY]) == 0
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
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("shared_adapter.")}},
               root / "no_shared.pth.tar")
    torch.save({"state_dict": state}, root / "tiny_mma.pth.tar")
    tiny.save_adapter(str(root / "mma_adapter.safetensors"))
    (root / "classes.py").write_text("import os\nCLASSES = ['a', 'b']\n")
    (root / "empty_classes.txt").write_text("\n\n")
    return w


def _snapshot(folder: str) -> dict[str, tuple[str, int]]:
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


# (id, argv with {placeholders}, fragments the error line must hold)
TRAIN = ["train", "--method", "mma", "--dataset", "caltech101", "--data-root", "{data}", "--out", "{done}", *TINY,
         "--config", "none"]
FOLDER = ["train", "--method", "mma", "--dataset", "folder", "--out", "{done}", *TINY, "--config", "none",
          "--data-root"]
EVAL = ["eval", "--dataset", "caltech101", "--data-root", "{data}", "--out", "{done}", *TINY]
PREDICT = ["predict", "{img}", *TINY]
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
    ("info-option-text", ["info", "--method", "mma", "--backbone", "clipadapt-tiny", "scale=abc"], ["scale"]),
    ("info-unknown-option", ["info", "--method", "mma", "--backbone", "clipadapt-tiny", "lr=1"], ["lr"]),
    # config files
    ("config-directory", [*TRAIN, "--config", "{root}/conf_dir"], ["conf_dir", "directory"]),
    ("config-malformed", [*TRAIN, "--config", "{root}/bad.yaml"], ["bad.yaml", "line 2", "mapping values"]),
    ("config-missing", [*TRAIN, "--config", "{root}/nowhere.yaml"], ["nowhere.yaml", "does not exist"]),
    ("config-not-mapping", [*TRAIN, "--config", "{root}/list.yaml"], ["list.yaml", "mapping"]),
    ("config-other-method", [*TRAIN, "--config", "{root}/coop.yaml"], ["coop"]),
    ("preset-missing", [*TRAIN[:-2], "--protocol", "fewshot"], ["no preset", "mma_fewshot.yaml", "--config none"]),
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
    ("import-scale-zero", ["import-mma", "{root}/tiny_mma.pth.tar", "--out", "{root}/x.safetensors",
                           "--scale", "0"], ["--scale"]),
    # data
    ("folder-without-test", [*FOLDER, "{no_test}"], ["no_test", "test/"]),
    ("folder-empty-class-first", [*FOLDER, "{empty_first}"], ["aaa", "no images"]),
    ("folder-empty-class-last", [*FOLDER, "{empty_last}"], ["zzz", "no images"]),
    ("folder-duplicate-names", [*FOLDER, "{dup_names}"], ["pet", "more than once"]),
    ("dataset-unknown", [*EVAL[:2], "mnist", *EVAL[3:]], ["mnist", "caltech101"]),
    ("data-root-missing", [*TRAIN[:6], "{root}/nowhere", *TRAIN[7:]], ["nowhere"]),
    ("method-unknown", [*TRAIN[:2], "magic", *TRAIN[3:]], ["magic", "zeroshot"]),
    ("eval-trainable-without-checkpoint", [*EVAL, "--method", "mma"], ["mma", "--checkpoint"]),
    ("eval-checkpoint-missing", [*EVAL, "--checkpoint", "{root}/none.safetensors"], ["none.safetensors"]),
    ("eval-checkpoint-corrupt", [*EVAL, "--checkpoint", "{root}/not_adapter.safetensors"], ["not_adapter"]),
    # predict
    ("classes-duplicate", [*PREDICT, "--classes", "a,a,b"], ["a", "more than once"]),
    ("classes-file-duplicate", [*PREDICT, "--classes-file", "{root}/dup_classes.txt"], ["red", "more than once"]),
    ("classes-one", [*PREDICT, "--classes", "a"], ["two class names"]),
    ("classes-file-is-code", [*PREDICT, "--classes-file", "{root}/classes.py"], ["classes.py", "line 1", "one class"]),
    ("classes-file-empty", [*PREDICT, "--classes-file", "{root}/empty_classes.txt"], ["empty_classes.txt", "empty"]),
    ("classes-and-classes-file", [*PREDICT, "--classes", "a,b", "--classes-file", "{root}/dup_classes.txt"],
     ["--classes", "--classes-file"]),
    ("eval-method-contradicts-checkpoint", [*EVAL, "--method", "coop", "--checkpoint",
                                            "{root}/mma_adapter.safetensors"], ["coop", "'mma'", "--method"]),
    ("feature-cache-both", [*EVAL, "--feature-cache", "{root}/fc", "--no-feature-cache"],
     ["--feature-cache", "--no-feature-cache"]),
    ("classes-none", [*PREDICT], ["--classes"]),
    ("image-missing", ["predict", "{root}/gone.jpg", "--classes", "a,b", *TINY], ["gone.jpg"]),
    ("image-corrupt", ["predict", "{root}/not_image.jpg", "--classes", "a,b", *TINY], ["not_image.jpg"]),
    # outputs
    ("out-is-a-file", [*EVAL[:5], "--out", "{root}/a_file", *TINY], ["a_file", "is a file"]),
    ("out-below-a-file", [*EVAL[:5], "--out", "{root}/a_file/run", *TINY], ["a_file", "writable"]),
    ("import-out-is-dir", ["import-mma", "{root}/tiny_mma.pth.tar", "--out", "{done}", "--backbone",
                           "clipadapt-tiny", "--pretrained", "none"], ["directory"]),
    # import-mma
    ("import-no-shared-keys", ["import-mma", "{root}/no_shared.pth.tar", "--out", "{root}/x.safetensors",
                               "--backbone", "clipadapt-tiny", "--pretrained", "none"], ["shared_adapter"]),
    ("import-other-backbone", ["import-mma", "{root}/tiny_mma.pth.tar", "--out", "{root}/x.safetensors",
                               "--backbone", "synthetic", "--pretrained", "none"], ["tiny_mma.pth.tar"]),
    ("import-missing", ["import-mma", "{root}/gone.pth.tar", "--out", "{root}/x.safetensors"], ["gone.pth.tar"]),
    # export and adapters as folders or Hub ids (no network: refused before any lookup)
    ("export-run-missing", ["export", "{root}/nowhere", "--out", "{root}/exported"], ["nowhere", "does not exist"]),
    ("export-unfinished-run", ["export", "{no_test}", "--out", "{root}/exported"],
     ["no_test", "not a finished training run"]),
    ("checkpoint-folder-without-adapter", [*EVAL, "--checkpoint", "{no_test}"], ["no_test", "adapter.safetensors"]),
    ("checkpoint-bad-hub-id", [*EVAL, "--checkpoint", "hf-hub:not a repo"], ["not a repo", "Hub model id"]),
    # backbones
    ("backbone-unknown", [*EVAL[:-4], "--backbone", "ViT-Q-99", "--pretrained", "none"], ["ViT-Q-99"]),
    ("pretrained-unknown-tag", [*EVAL[:-4], "--backbone", "ViT-B-16", "--pretrained", "nonsense"], ["nonsense"]),
    ("synthetic-weights-missing", [*EVAL[:-4], "--backbone", "synthetic", "--pretrained", "{root}/w.safetensors"],
     ["w.safetensors"]),
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


def test_cuda_without_a_gpu(world, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["eval", "--dataset", "caltech101", "--data-root", world["data"], "--out",
                 str(world["root"] / "cuda"), *TINY, "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("clipadapt: error:") == 1 and "cuda" in err and "not available" in err


def test_unreadable_image_survives_dataloader_workers(world, tmp_path, capsys):
    folder = tmp_path / "imgs"
    for c in ("cat", "dog"):
        for i in range(5):
            _write_image(folder / c / f"{i}.png")
    broken = folder / "dog" / "0.png"  # sorted and split 80/20 by a fixed seed: some image of each class is tested
    for path in (folder / "dog").iterdir():
        path.write_bytes(b"not an image")
    # In-process: the DataLoader's workers are real processes all the same.
    code = main(["eval", "--dataset", "folder", "--data-root", str(folder), "--out", str(tmp_path / "o"),
                 "--workers", "2", *TINY])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("clipadapt: error:")]
    assert code == 2 and len(errors) == 1, err
    assert "Traceback" not in err and "Original" not in errors[0]
    assert str(broken.parent) in errors[0] and "cannot read image" in errors[0], errors[0]
    assert errors[0].rstrip().endswith("UnidentifiedImageError")  # the whole line survived, not a fragment
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.slow
def test_console_exit_code_and_no_traceback(world):
    out = subprocess.run([sys.executable, "-m", "clipadapt.cli", "train", "--method", "mma", "--dataset",
                          "caltech101", "--data-root", world["data"], "--out", world["done"], *TINY, "--config", "none",
                          "lr=abc"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [line for line in out.stderr.strip().splitlines()
                                               if line.startswith("clipadapt: error:")]
    assert "'lr'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("flags, line", [
    (["--method", "MMA"], "unknown method 'MMA' (did you mean 'mma'?)"),
    (["--method", "mma", "--dataset", "euroset"], "unknown dataset 'euroset' (did you mean 'eurosat'?)"),
    (["--method", "mma", "--backbone", "ViT-B/16"], "unknown backbone 'ViT-B/16' (did you mean 'ViT-B-16'?)"),
    (["--method", "mma", "--backbone", "ViT-B-16", "--pretrained", "openia"], "(did you mean 'openai'?)"),
    (["--method", "mma", "--backbone", "no-such-model", "--config", "none"], "unknown backbone 'no-such-model' ("),
])
def test_a_typo_in_a_name_says_the_closest_names_in_one_short_line(fake_root, tmp_path, capsys, flags, line):
    args = ["train", "--data-root", fake_root, "--out", str(tmp_path / "run"), *flags]
    if "--dataset" not in flags:
        args += ["--dataset", "eurosat"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0] and len(err[0]) < 200 and "preset" not in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_mistyped_method_is_refused_before_torch_is_imported(fake_root, tmp_path):
    code = ("import sys; from clipadapt.cli import main; "
            f"code = main(['train', '--method', 'MMA', '--dataset', 'eurosat', '--data-root', {fake_root!r}, "
            f"'--out', {str(tmp_path / 'run')!r}]); print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr
