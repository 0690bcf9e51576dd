"""Fixtures of the method tests; helpers live in methods_helpers.py."""

import pytest
import torch

from tests.methods.methods_helpers import small_config
from vicc_fast.config import Config


@pytest.fixture
def cfg() -> Config:
    torch.manual_seed(0)
    return small_config()
