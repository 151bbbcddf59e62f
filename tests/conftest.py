import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tone():
    """A 1 s speech-like harmonic signal at 16 kHz."""
    from emova.audio import Audio

    sr = 16000
    t = np.arange(sr) / sr
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8)) * 0.2
    return Audio(x.astype(np.float32), sr)
