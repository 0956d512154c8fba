"""Zero-shot CLIP: nothing trained, the reference every method is measured against."""

from .base import Method, MethodConfig


class ZeroShot(Method):
    """CLIP's own logits with the dataset's prompt template."""

    name = "zeroshot"
    Config = MethodConfig
    off_options = {}  # it changes nothing
    prompt_sets = "mean"  # the classic CLIP ensemble baseline
