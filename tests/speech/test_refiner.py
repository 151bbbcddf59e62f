import pytest
import torch

from emova.speech.refiner import NOISE_TABLE_FRAMES, MelRefiner, MelRefinerConfig, frame_noise_keys


def test_config_validation():
    with pytest.raises(ValueError, match="kernel"):
        MelRefinerConfig(kernel=4)
    with pytest.raises(ValueError, match="noise"):
        MelRefinerConfig(noise=-1.0)
    with pytest.raises(ValueError, match="together"):
        MelRefinerConfig(mel_mean=[0.0] * 80)
    with pytest.raises(ValueError, match="80 finite"):
        MelRefinerConfig(mel_mean=[0.0] * 79, mel_std=[1.0] * 79)
    with pytest.raises(ValueError, match="positive"):
        MelRefinerConfig(mel_mean=[0.0] * 80, mel_std=[0.0] * 80)
    with pytest.raises(ValueError, match="unknown"):
        MelRefinerConfig.from_dict({"depth": 2})
    assert MelRefinerConfig.from_dict(MelRefinerConfig(steps=3).to_dict()).steps == 3


def test_noise_keys_depend_only_on_unit_position_and_place_in_unit():
    idx = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    full = frame_noise_keys(idx + 5)
    window = frame_noise_keys(idx[3:] + 5)  # a streamed window that starts at unit 1
    assert torch.equal(full[3:], window)
    assert len(set(full.tolist())) == len(full)  # distinct frames, distinct noise rows
    assert int(full.max()) < NOISE_TABLE_FRAMES


def test_a_new_refiner_returns_its_input_plus_the_noise_and_learns_a_sharpening():
    torch.manual_seed(0)
    cfg = MelRefinerConfig(n_mels=8, dim=32, layers=2, kernel=3, style_dim=4, time_dim=16, steps=4, noise=0.3)
    model = MelRefiner(cfg)
    model.set_normalisation(torch.zeros(8), torch.ones(8))
    mu = torch.randn(20, 8)
    f0, vuv, style = torch.zeros(20), torch.ones(20), torch.zeros(1, 4)
    idx = torch.arange(20) // 2
    out = model.refine(mu, f0, vuv, style, idx)  # zero-initialised output: x stays at mu + noise
    assert torch.allclose(out, mu + 0.3 * model.noise_table[frame_noise_keys(idx)], atol=1e-5)
    # target = 2 * mu (a "sharper" version of the input): flow matching learns to move mu + noise there
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        m = torch.randn(8, 16, 8)
        loss = model.loss(2 * m, m, torch.zeros(8, 16, 2), torch.zeros(8, 4), torch.ones(8, 16, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    out = model.refine(mu, f0, vuv, style, idx)
    assert (out - 2 * mu).abs().mean() < 0.5 * (mu + 0.3 * model.noise_table[frame_noise_keys(idx)] - 2 * mu).abs().mean()
