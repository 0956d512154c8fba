"""The conformance kit (clipadapt.testing): every built-in method passes it, and a method written to
break an invariant makes it fail naming that invariant."""

import importlib
import random
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from clipadapt import testing
from clipadapt.methods import METHODS
from clipadapt.methods.clip_adapter import CLIPAdapter
from clipadapt.methods.mma import MMA
from clipadapt.testing import check_method

BUILT_IN = METHODS  # name -> class: the one registry lookup this file makes

# Options under which a method acts strongly enough on the random tiny backbone for the checks to
# see it, or has frozen work to skip: MMA-style scales of 0.001 move logits by less than the
# tolerances; RMMA and CLIP-LoRA start at block 1 by default (no frozen prefix to cache); PromptSRC's
# prompt averaging centred on epoch 15 gives the kit's two epochs one weight each side of 0.
STRONGER = {
    "mma": {"scale": 0.1},
    "rmadapter": {"scale": 0.1},
    "mma_pp": {"train_scale": 0.1, "test_scale": 0.1, "dropout": 0.3},
    "rmma": {"first_block": 2},
    "clip_lora": {"position": "up", "dropout": 0.25},
    "promptsrc": {"gpa_mean": 1.5},
}


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_every_built_in_method_keeps_every_invariant(name):
    cls = BUILT_IN[name]
    results = check_method(cls, **STRONGER.get(name, {}))
    # Skipped are exactly the invariants the class declares away; every other one ran and passed.
    skipped = {
        testing.OFF: cls.off_options is None,
        testing.TEXT: cls.text_depends_on_images,
        testing.POOLED: not cls.pooled_final_block,
        testing.GRADIENTS: name == "zeroshot",  # nothing to train
        testing.RESUME: name == "zeroshot",
    }
    assert set(results) == set(testing.INVARIANTS)
    for invariant, result in results.items():
        assert result.startswith("skipped: ") == skipped.get(invariant, False), (invariant, result)
        assert result.startswith("skipped: ") or result == "passed", (invariant, result)


# ---- methods written to break one invariant each --------------------------------------------------
class NudgesTheBackbone(CLIPAdapter):
    """Changes a frozen weight in place in every forward pass."""

    def after_heads(self, backbone, img_f, txt_f):
        with torch.no_grad():
            backbone.clip.ln_final.weight.mul_(1.001)
        return super().after_heads(backbone, img_f, txt_f)


class TrainsTheFrozenNorm(MMA):
    """Makes the image tower's final LayerNorm (a backbone module) its own trainable parameters."""

    def __init__(self, config, backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.norm = backbone.clip.visual.ln_post
        self.norm.requires_grad_(True)


class CentresTheBatch(CLIPAdapter):
    """Subtracts the batch's mean image feature, at evaluation too."""

    def after_heads(self, backbone, img_f, txt_f):
        img_f, txt_f = super().after_heads(backbone, img_f, txt_f)
        if img_f is not None:
            img_f = img_f - 0.5 * img_f.mean(0, keepdim=True)
        return img_f, txt_f


class StartsLater(MMA):
    """Declares its first active blocks one block later than its first adapter."""

    def first_active_blocks(self, backbone):
        return self.start, self.start


class ClaimsOutputOnly(MMA):
    """Declares that it acts on output features only, though its adapters sit inside the blocks."""

    output_only = True


class RandomShift(CLIPAdapter):
    """Shifts the image features by a random vector kept in a plain attribute (never saved)."""

    def __init__(self, config, backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.shift = 0.5 * torch.randn(backbone.embed_dim)

    def after_heads(self, backbone, img_f, txt_f):
        img_f, txt_f = super().after_heads(backbone, img_f, txt_f)
        return (None if img_f is None else img_f + self.shift), txt_f


class UnusedTemperature(CLIPAdapter):
    """Declares a trainable temperature that nothing uses."""

    def __init__(self, config, backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.temperature = nn.Parameter(torch.ones(()))


class DetachedBias(CLIPAdapter):
    """Adds a trainable bias through .detach(): the loss never reaches it."""

    def __init__(self, config, backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.bias = nn.Parameter(torch.zeros(backbone.embed_dim))

    def after_heads(self, backbone, img_f, txt_f):
        img_f, txt_f = super().after_heads(backbone, img_f, txt_f)
        return (None if img_f is None else img_f + self.bias.detach()), txt_f


class BiasedWhenOff(CLIPAdapter):
    """Adds a learned bias to the image features that its off switch (ratio 0) leaves on."""

    def __init__(self, config, backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.bias = nn.Parameter(torch.zeros(backbone.embed_dim))

    def after_heads(self, backbone, img_f, txt_f):
        img_f, txt_f = super().after_heads(backbone, img_f, txt_f)
        return (None if img_f is None else img_f + self.bias), txt_f


class TextReadsImages(CLIPAdapter):
    """Moves the class text towards the batch's images but declares text_depends_on_images False."""

    def after_heads(self, backbone, img_f, txt_f):
        img_f, txt_f = super().after_heads(backbone, img_f, txt_f)
        if img_f is not None and txt_f is not None:
            txt_f = txt_f + 0.5 * img_f.mean(0)
        return img_f, txt_f


class PooledButMixesTokens(MMA):
    """Opts in to the pooled final block but mixes the final block's output tokens."""

    def step(self, index, backbone, img, txt, queries=None):
        img, txt = super().step(index, backbone, img, txt, queries)
        if img is not None and index == len(backbone.image_blocks) - 1:
            img = img + img.mean(1, keepdim=True)
        return img, txt


class ClockSeededNoise(CLIPAdapter):
    """Adds training noise drawn from a generator seeded by the clock."""

    def after_heads(self, backbone, img_f, txt_f):
        img_f, txt_f = super().after_heads(backbone, img_f, txt_f)
        if self.training and img_f is not None:
            draws = torch.Generator().manual_seed(time.time_ns())
            img_f = img_f + 0.1 * torch.randn(img_f.shape, generator=draws)
        return img_f, txt_f


class UnsavedRunningMean(CLIPAdapter):
    """Keeps a running mean of the training features in a buffer left out of the saved tensors."""

    def __init__(self, config, backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.register_buffer("running", torch.zeros(backbone.embed_dim), persistent=False)

    def after_heads(self, backbone, img_f, txt_f):
        img_f, txt_f = super().after_heads(backbone, img_f, txt_f)
        if img_f is None:
            return img_f, txt_f
        if self.training:
            self.running.mul_(0.5).add_(0.5 * img_f.detach().mean(0))
        return img_f - self.running, txt_f


class WarmsUpByAStepCounter(CLIPAdapter):
    """Ramps its ratio up over the first training steps, counted in a plain attribute that a
    checkpoint does not keep."""

    def __init__(self, config, backbone, classnames):
        super().__init__(config, backbone, classnames)
        self.steps = 0

    def after_heads(self, backbone, img_f, txt_f):
        if not self.training or img_f is None:
            return super().after_heads(backbone, img_f, txt_f)
        self.steps += 1
        ramp = min(1.0, self.steps / 4)
        return ramp * self.adapter(img_f) + (1 - ramp) * img_f, txt_f


class EpochWeightsFromACounter(CLIPAdapter):
    """Averages epochs with weights that change from one call to the next (the last epoch, then
    the first): a resumed run, which asks again, averages other states."""

    calls = 0

    def epoch_weights(self, epochs):
        type(self).calls += 1
        last = type(self).calls % 2
        return [float(e == (epochs - 1 if last else 0)) for e in range(epochs)]


BROKEN = [
    (NudgesTheBackbone, {}, testing.FROZEN),
    (TrainsTheFrozenNorm, {}, testing.FROZEN),
    (CentresTheBatch, {}, testing.BATCH),
    (StartsLater, {}, testing.CACHED),
    (ClaimsOutputOnly, {}, testing.CACHED),
    (RandomShift, {}, testing.STATELESS),
    (UnusedTemperature, {}, testing.GRADIENTS),
    (DetachedBias, {}, testing.GRADIENTS),
    (BiasedWhenOff, {}, testing.OFF),
    (TextReadsImages, {}, testing.TEXT),
    (PooledButMixesTokens, {"scale": 0.1}, testing.POOLED),
    (ClockSeededNoise, {}, testing.SEED),
    (UnsavedRunningMean, {}, testing.ROUND_TRIP),
    (WarmsUpByAStepCounter, {}, testing.RESUME),
    (EpochWeightsFromACounter, {}, testing.RESUME),
]


@pytest.mark.parametrize(
    "broken, options, invariant", BROKEN, ids=[cls.__name__ for cls, _, _ in BROKEN]
)
def test_a_method_that_breaks_an_invariant_fails_naming_it(broken, options, invariant):
    with pytest.raises(AssertionError) as failure:
        check_method(broken, **options)
    message = str(failure.value)
    assert f"{broken.__name__} ('{broken.name}') breaks" in message
    assert f"[{invariant}] " in message, message


def test_the_failure_gives_the_numbers():
    with pytest.raises(
        AssertionError,
        match=r"\[batch independence\] logits of each image scored "
        r"alone against in a batch of 5: differ by up to \d",
    ):
        check_method(CentresTheBatch)


def test_the_kit_leaves_the_callers_threads_and_random_states_alone():
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    check_method(BUILT_IN["clip_adapter"])  # trains: the trainer seeds all three generators
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


def test_the_kit_refuses_what_is_not_a_method_class_and_bad_options_as_themselves():
    with pytest.raises(TypeError, match="takes a Method subclass"):
        check_method(object)
    with pytest.raises(ValueError, match="unknown option"):
        check_method(BUILT_IN["mma"], no_such_option=1)


def test_the_kit_imports_without_pytest(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytest", None)  # `import pytest` now raises ImportError
    monkeypatch.delitem(sys.modules, "clipadapt.testing")
    assert importlib.import_module("clipadapt.testing").check_method
