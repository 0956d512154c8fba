import logging

import pytest
import torch

from clipadapt.backbone import load_backbone
from clipadapt.data.coop import COOP_DATASETS
from clipadapt.data.fake import make_coop_tree

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that random weights are random


@pytest.fixture(scope="session")
def tiny_backbone():
    torch.manual_seed(0)
    return load_backbone("clipadapt-tiny", "none")


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in COOP_DATASETS:
        make_coop_tree(str(root), name)
    return str(root)
