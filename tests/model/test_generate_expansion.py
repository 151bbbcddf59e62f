"""generate's row expansion (beam search, num_return_sequences) keeps each sample's images whole."""

from types import SimpleNamespace

import torch

from emova.model.modeling_emova import EmovaForConditionalGeneration


def test_each_samples_images_are_repeated_as_blocks():
    img = 7
    ids = torch.tensor([[1, img, img, 2, 0, 0], [3, 4, 5, 6, 0, 0], [img, img, 1, img, img, img]])  # 2, 0, 5 tokens
    grid = torch.tensor([[1, 2, 4], [1, 2, 2], [1, 4, 4]])  # 8 (2 tokens), 4 (1 token), 16 (4 tokens)
    pixels = torch.arange(28, dtype=torch.float32)[:, None].repeat(1, 3)
    me = SimpleNamespace(config=SimpleNamespace(image_token_index=img))
    values, grids = EmovaForConditionalGeneration._repeat_images(me, ids, pixels, grid, 2)
    first, second = pixels[:8], pixels[8:28]  # sample 0: image 0; sample 2: images 1 and 2
    assert torch.equal(values, torch.cat([first, first, second, second]))
    assert torch.equal(grids, torch.cat([grid[:1], grid[:1], grid[1:], grid[1:]]))
