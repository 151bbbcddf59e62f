import pytest

from emova.styles import Style, all_styles


def test_roundtrip_and_fields():
    s = Style.parse("gender-male_emotion-happy_speed-fast_pitch-high")
    assert (s.gender, s.emotion, s.speed, s.pitch) == ("male", "happy", "fast", "high")
    assert str(s) == "gender-male_emotion-happy_speed-fast_pitch-high"
    assert Style.parse(str(Style())) == Style()


@pytest.mark.parametrize("bad", ["", "gender-female", "gender-robot_emotion-happy_speed-fast_pitch-high",
                                 "gender-female_emotion-bored_speed-fast_pitch-high",
                                 "gender-female_emotion-happy_speed-warp_pitch-high",
                                 "gender-female_emotion-happy_speed-fast_pitch-ultra"])
def test_bad_strings_are_refused(bad):
    with pytest.raises(ValueError):
        Style.parse(bad)


def test_unknown_field_values():
    with pytest.raises(ValueError, match="emotion"):
        Style(emotion="joyful")
    with pytest.raises(ValueError, match="unknown style field"):
        Style().replace(colour="red")


def test_all_styles_is_the_126_table():
    styles = all_styles()
    assert len(styles) == 126 and len(set(map(str, styles))) == 126


def test_all_styles_follows_official_index_order():
    styles = all_styles()
    assert [str(s) for s in styles] == sorted(str(s) for s in styles)
    assert str(styles[41]) == "gender-female_emotion-neutral_speed-normal_pitch-normal"
