import torch

from emova.speech.fsq import FSQ


def test_fsq_gives_4096_codes_and_roundtrips():
    fsq = FSQ([8, 8, 8, 8])
    z = torch.randn(4000, 4)
    q, zb, idx = fsq(z)
    assert idx.min() >= 0 and idx.max() < 4096
    assert len(idx.unique()) > 1000  # spread inputs reach many codes
    assert torch.equal(fsq.indices_to_codes(idx), q.detach())
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(torch.arange(4096))), torch.arange(4096))


def test_fsq_straight_through_gradient():
    fsq = FSQ([8, 8, 8, 8])
    z = torch.randn(10, 4, requires_grad=True)
    q, _, _ = fsq(z)
    q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
