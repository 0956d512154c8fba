"""TaskRes passes clipadapt's conformance kit, and its residual follows the class names."""

import torch

from clipadapt import build_model
from clipadapt.testing import check_method
from clipadapt_taskres import TaskRes


def test_taskres_passes_the_conformance_kit():
    check_method(TaskRes)


def _model(classes, **options):
    torch.manual_seed(0)
    return build_model("taskres", classes, backbone="clipadapt-tiny", pretrained="none", **options)


def test_the_residual_is_added_to_trained_classes_only():
    model = _model(["cat", "dog"], residual_scale=0.5)
    with torch.no_grad():
        model.method.residuals.copy_(torch.randn_like(model.method.residuals))
    frozen = model.backbone
    base = torch.randn(3, model.method.residuals.shape[1])
    model.method.set_classes(["dog", "bird", "cat"])
    _, adapted = model.method.after_heads(frozen, None, base)
    torch.testing.assert_close(adapted[0], base[0] + 0.5 * model.method.residuals[1])
    torch.testing.assert_close(adapted[1], base[1])  # never trained on: CLIP's own classifier
    torch.testing.assert_close(adapted[2], base[2] + 0.5 * model.method.residuals[0])


def test_one_residual_vector_a_class():
    model = _model(["cat", "dog", "bird"])
    assert model.method.num_trainable() == 3 * model.method.residuals.shape[1]
    assert torch.count_nonzero(model.method.residuals) == 0  # starts as zero-shot CLIP
