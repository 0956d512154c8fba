"""`clipadapt import --method M`: official checkpoints of MaPLe, CoOp and CLIP-LoRA round-trip (and, through
the same command, CoCoOp, KgCoOp and PromptSRC, whose official layouts their own test files build).

Each checkpoint is built with the key names and file layout the official code saves, written here
from the official files (not from clipadapt's state dict names):
- MaPLe (muzairkhattak/multimodal-prompt-learning trainers/maple.py): the whole CustomCLIP is registered
  with Dassl, so the state dict holds `prompt_learner.ctx`, `prompt_learner.proj.*`,
  `prompt_learner.compound_prompts_text.j`, `prompt_learner.compound_prompt_projections.j.*`, the
  buffers `prompt_learner.token_prefix/suffix` and the frozen `image_encoder.*`, `text_encoder.*`.
- CoOp (KaiyangZhou/CoOp trainers/coop.py): `prompt_learner` is registered, so the keys are `ctx`,
  `token_prefix`, `token_suffix`.
- CLIP-LoRA (MaxZanella/CLIP-LoRA loralib/utils.py save_lora): {"weights": {"layer_i": {"q_proj":
  {"w_lora_A", "w_lora_B"}, ..., "proj": ...}}, "metadata": {r, alpha, encoder, params, position}},
  layers numbered text tower first, then vision (apply_lora).
"""

import pytest
import torch
from conftest import perturbed_model

from clipadapt.adapters import official_readers
from clipadapt.cli import main
from clipadapt.model import build_model, load_model

TINY = dict(backbone="clipadapt-tiny", pretrained="none")
TINY_FLAGS = ["--backbone", "clipadapt-tiny", "--pretrained", "none"]
CLASSES = ["red disc", "green square", "blue disc", "yellow square"]


def _round_trip(tmp_path, method, source, official_file, *options):
    out = tmp_path / f"{method}.safetensors"
    assert (
        main(
            [
                "import",
                "--method",
                method,
                str(official_file),
                "--out",
                str(out),
                *TINY_FLAGS,
                "--classes",
                ",".join(CLASSES),
                *options,
            ]
        )
        == 0
    )
    loaded = load_model(str(out), CLASSES).eval()
    ours, theirs = loaded.method.state_dict(), source.method.state_dict()
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key].float()), key
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=1e-6)
    return loaded


def test_every_method_with_a_reader_is_found_on_its_module():
    assert {"mma", "mma_pp", "mmrl", "maple", "coop", "clip_lora"} <= set(official_readers())
    assert "rmadapter" not in official_readers() and "zeroshot" not in official_readers()


def test_maple_official_checkpoint_round_trips(tmp_path):
    source = perturbed_model("maple", CLASSES, seed=3)
    m = source.method
    learner = {
        "prompt_learner.ctx": m.ctx,
        "prompt_learner.proj.weight": m.proj.weight,
        "prompt_learner.proj.bias": m.proj.bias,
        "prompt_learner.token_prefix": torch.zeros(
            4, 1, 64
        ),  # buffers the official load_model deletes
        "prompt_learner.token_suffix": torch.zeros(4, 74, 64),
    }
    for j, prompt in enumerate(m.compound_prompts_text):
        learner[f"prompt_learner.compound_prompts_text.{j}"] = prompt
        learner[f"prompt_learner.compound_prompt_projections.{j}.weight"] = (
            m.compound_prompt_projections[j].weight
        )
        learner[f"prompt_learner.compound_prompt_projections.{j}.bias"] = (
            m.compound_prompt_projections[j].bias
        )
    frozen = {
        "image_encoder.conv1.weight": torch.zeros(8, 3, 4, 4),
        "text_encoder.positional_embedding": torch.zeros(77, 64),
        "logit_scale": torch.tensor(4.6),
    }
    path = tmp_path / "model.pth.tar-5"
    torch.save(
        {
            "state_dict": {k: v.detach().clone() for k, v in {**learner, **frozen}.items()},
            "epoch": 5,
        },
        path,
    )
    loaded = _round_trip(tmp_path, "maple", source, path)
    assert loaded.method.prompt_depth == m.prompt_depth and loaded.template == source.template


def test_coop_official_checkpoint_round_trips_and_csc_is_refused(tmp_path, capsys):
    source = perturbed_model("coop", CLASSES, seed=3)
    path = tmp_path / "model.pth.tar-50"
    torch.save(
        {
            "state_dict": {
                "ctx": source.method.ctx.detach().clone().half(),  # fp16, as CLIP's default dtype
                "token_prefix": torch.zeros(4, 1, 64),
                "token_suffix": torch.zeros(4, 60, 64),
            },
            "epoch": 50,
        },
        path,
    )
    source.method.ctx.data = source.method.ctx.data.half().float()
    _round_trip(tmp_path, "coop", source, path)
    torch.save({"state_dict": {"ctx": torch.zeros(4, 16, 64)}}, tmp_path / "csc.pth.tar")
    assert (
        main(
            [
                "import",
                "--method",
                "coop",
                str(tmp_path / "csc.pth.tar"),
                "--out",
                str(tmp_path / "x.st"),
                *TINY_FLAGS,
            ]
        )
        == 2
    )
    assert "class-specific" in capsys.readouterr().err


def _save_lora_file(path, method, encoder, params, position):
    """The dict save_lora writes, from the adapted blocks of `method` in apply_lora's order."""
    official_names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
    towers = ([method.text_lora] if encoder in ("text", "both") else []) + (
        [method.image_lora] if encoder in ("vision", "both") else []
    )
    weights, i = {}, 0
    for tower in towers:
        for block in sorted(tower, key=int):
            weights[f"layer_{i}"] = {
                official_names[p]: {
                    "w_lora_A": lora.A.detach().clone(),
                    "w_lora_B": lora.B.detach().clone(),
                }
                for p, lora in tower[block].items()
            }
            i += 1
    metadata = {
        "r": method.config.rank,
        "alpha": method.config.alpha,
        "encoder": encoder,
        "params": params,
        "position": position,
    }
    torch.save({"weights": weights, "metadata": metadata}, path)


@pytest.mark.parametrize(
    "encoder,params,position", [("both", ["q", "k", "v"], "all"), ("text", ["q", "v", "o"], "up")]
)
def test_clip_lora_official_file_round_trips(tmp_path, encoder, params, position):
    source = perturbed_model(
        "clip_lora",
        CLASSES,
        seed=3,
        encoder=encoder,
        params=params,
        position=position,
        alpha=2.0,
        rank=4,
    )
    bb = source.backbone
    path = tmp_path / "lora_weights.pt"
    _save_lora_file(path, source.method, encoder, params, position)
    loaded = _round_trip(
        tmp_path,
        "clip_lora",
        source,
        path,
        f"text_depth={len(bb.text_blocks)}",
        f"image_depth={len(bb.image_blocks)}",
    )
    assert (loaded.method.config.rank, loaded.method.config.alpha) == (4, 2.0)


def test_clip_lora_file_with_too_few_layers_is_refused(tmp_path, capsys):
    source = perturbed_model("clip_lora", CLASSES, seed=3)
    path = tmp_path / "lora_weights.pt"
    _save_lora_file(path, source.method, "both", ["q", "k", "v"], "all")
    # the ViT-B/16 default depths (12 + 12 blocks) do not fit the tiny backbone's layers
    assert (
        main(
            [
                "import",
                "--method",
                "clip_lora",
                str(path),
                "--out",
                str(tmp_path / "x.st"),
                *TINY_FLAGS,
            ]
        )
        == 2
    )
    assert "LoRA layers" in capsys.readouterr().err


def test_the_aliases_still_import(tmp_path):
    source = build_model("mma", CLASSES, scale=0.5, adapter_start=2, **TINY).eval()
    path = tmp_path / "model.pth.tar-5"
    torch.save(
        {"state_dict": {k: v.detach().clone() for k, v in source.method.state_dict().items()}}, path
    )
    via_alias, via_import = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert (
        main(["import-mma", str(path), "--out", str(via_alias), *TINY_FLAGS, "--scale", "0.5"]) == 0
    )
    assert (
        main(
            [
                "import",
                "--method",
                "mma",
                str(path),
                "--out",
                str(via_import),
                *TINY_FLAGS,
                "scale=0.5",
            ]
        )
        == 0
    )
    a, b = (
        load_model(str(via_alias), CLASSES).method.state_dict(),
        load_model(str(via_import), CLASSES).method.state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)


def test_all_nine_methods_import_through_the_one_command():
    assert set(official_readers()) == {
        "mma",
        "mma_pp",
        "mmrl",
        "maple",
        "coop",
        "clip_lora",
        "cocoop",
        "kgcoop",
        "promptsrc",
    }


def test_cocoop_kgcoop_and_promptsrc_import_through_the_one_command(tmp_path):
    """The readers of the three newest methods, reached by `import --method M` (their files as the official
    trainers save them: tests/test_cocoop_kgcoop.py and tests/test_promptsrc.py say which keys and why)."""
    from test_cocoop_kgcoop import _official_cocoop_file
    from test_promptsrc import _official_checkpoint

    cocoop = perturbed_model("cocoop", CLASSES, seed=3)
    _official_cocoop_file(tmp_path / "cocoop.pth.tar-10", cocoop.method, half=False)
    _round_trip(tmp_path, "cocoop", cocoop, tmp_path / "cocoop.pth.tar-10")

    kgcoop = perturbed_model("kgcoop", CLASSES, seed=3)
    torch.save(
        {
            "state_dict": {
                "ctx": kgcoop.method.ctx.detach().clone(),
                "token_prefix": torch.zeros(4, 1, 64),
                "token_suffix": torch.zeros(4, 72, 64),
            },
            "epoch": 100,
        },
        tmp_path / "kgcoop.pth.tar",
    )
    _round_trip(tmp_path, "kgcoop", kgcoop, tmp_path / "kgcoop.pth.tar")

    promptsrc = perturbed_model("promptsrc", CLASSES, seed=3)
    _official_checkpoint(promptsrc, tmp_path / "promptsrc.pth.tar-20")
    with torch.no_grad():
        promptsrc.method.ctx.copy_(
            promptsrc.method.ctx.half().float()
        )  # the official file keeps ctx in fp16
    _round_trip(tmp_path, "promptsrc", promptsrc, tmp_path / "promptsrc.pth.tar-20")
