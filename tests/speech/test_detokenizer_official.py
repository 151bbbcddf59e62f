import numpy as np
import pytest
import torch

from emova.convert.speech_tokenizer import OfficialSpeechTokenizer, save_speech_tokenizer
from emova.speech.detokenizer import SpeechDetokenizer
from emova.speech.official_detokenizer import OfficialDetokenizer
from emova.styles import Style
from tests.test_official_speech import _randomise, tiny_config


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = OfficialSpeechTokenizer(tiny_config()).eval()
    _randomise(model)
    return save_speech_tokenizer(model, tmp_path_factory.mktemp("official") / "speech_tokenizer")


def test_official_directory_is_delegated(official_dir):
    detok = SpeechDetokenizer.from_pretrained(official_dir)
    assert isinstance(detok, OfficialDetokenizer)
    a = detok.decode([5, 5, 9, 12, 9], Style(gender="male", emotion="happy"))
    assert a.sample_rate == detok.sample_rate and a.duration > 0 and np.isfinite(a.samples).all()
    chunks = list(detok.decode_stream(iter([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]), Style(), chunk_units=5))
    assert len(chunks) == 2  # chunks double: 5 units, then the 8 left (fewer than the next size, 10)
    with pytest.raises(ValueError, match="unknown emotion"):
        detok.decode([1, 2], "gender-male_emotion-bored_speed-normal_pitch-normal")
    with pytest.raises(ValueError, match="empty"):
        detok.decode([])
