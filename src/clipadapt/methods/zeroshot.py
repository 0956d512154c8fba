"""Zero-shot CLIP: nothing trained, the reference every method is measured against."""

from .base import Method, MethodConfig, Paper


class ZeroShot(Method):
    """CLIP's own logits with the dataset's prompt template."""

    name = "zeroshot"
    paper = Paper(
        "CLIP: Learning Transferable Visual Models From Natural Language Supervision",
        "ICML 2021",
        "https://arxiv.org/abs/2103.00020",
    )
    Config = MethodConfig
    off_options = {}  # it changes nothing
    prompt_sets = "mean"  # the classic CLIP ensemble baseline
