"""One torch thread for the server tests: the tiny model gains nothing from two, and on a busy 2-core machine
OpenMP's spinning threads made its steps 10-50x slower (the setting is restored afterwards)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
