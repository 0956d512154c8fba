"""CLIP-LoRA's prompt is the official code's effective template, not the dataset's CoOp template.

MaxZanella/CLIP-LoRA (commit 358f0d7) datasets/dtd.py, lines 7-10, as the file holds them: the CoOp
template sits in a string literal and the assignment after it is what the module binds; lora.py
(evaluate_lora, line 12, and run_lora, line 94) formats `dataset.template[0]`. Every other dataset
file (caltech101 ... ucf101, imagenet's `imagenet_templates`) ends the same way.
"""

import torch

from clipadapt.methods.clip_lora import OFFICIAL_TEMPLATE
from clipadapt.model import build_model

OFFICIAL_DTD_LINES_7_TO_10 = '''"""
template = ['{} texture.']
"""
template = ['a photo of a {}.']
'''
COOP_DTD_TEMPLATE = (
    "{} texture."  # what the first of those lines says, and clipadapt's dtd template
)
TINY = dict(backbone="clipadapt-tiny", pretrained="none")
CLASSES = ["banded", "braided", "bubbly"]


def _effective_template(source: str) -> str:
    """dataset.template[0] as the official module binds it."""
    namespace: dict = {}
    exec(compile(source, "datasets/dtd.py", "exec"), namespace)
    return namespace["template"][0]


def test_the_official_files_second_assignment_wins():
    assert "['{} texture.']" in OFFICIAL_DTD_LINES_7_TO_10  # the line a reader sees first
    assert (
        _effective_template(OFFICIAL_DTD_LINES_7_TO_10) == "a photo of a {}." == OFFICIAL_TEMPLATE
    )


def test_clip_lora_prompts_with_the_effective_template_on_a_dataset_with_its_own():
    model = build_model("clip_lora", CLASSES, default_template=COOP_DTD_TEMPLATE, **TINY).eval()
    assert model.template == _effective_template(OFFICIAL_DTD_LINES_7_TO_10)
    assert model.class_prompts == [
        ["a photo of a banded."],
        ["a photo of a braided."],
        ["a photo of a bubbly."],
    ]
    # untrained (B = 0) it is zero-shot CLIP prompted so, and not prompted with the dataset's template
    official = build_model("zeroshot", CLASSES, default_template="a photo of a {}.", **TINY).eval()
    coop = build_model("zeroshot", CLASSES, default_template=COOP_DTD_TEMPLATE, **TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), official(images), rtol=0, atol=1e-5)
        assert not torch.allclose(model(images), coop(images), atol=1e-3)


def test_the_dataset_template_is_a_switch():
    model = build_model(
        "clip_lora", CLASSES, default_template=COOP_DTD_TEMPLATE, dataset_template=True, **TINY
    )
    assert model.template == COOP_DTD_TEMPLATE
    explicit = build_model(
        "clip_lora", CLASSES, default_template=COOP_DTD_TEMPLATE, template="itap of a {}.", **TINY
    )
    assert explicit.template == "itap of a {}."
