import pytest
import torch

from emova.train import accel


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU rule")
def test_bf16_autocast_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        accel._warn_no_bf16.cache_clear()
        assert accel.autocast_bf16(True) is False
    assert accel.fresh_accelerator(True).mixed_precision == "no"
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    assert accel.autocast_bf16(True) is True
    assert accel.fresh_accelerator(True).mixed_precision == "bf16"
    assert accel.autocast_bf16(False) is False
