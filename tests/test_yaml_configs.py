"""Every YAML config the project reads fails with an error naming the file and the problem."""

import pytest

from emova.model.config_loader import load_model_config
from emova.train.engines import fully_shard_module
from emova.train.omni import OmniTrainConfig, config_data, parse_overrides
from emova.train.reader import ReaderTrainConfig
from emova.train.s2u import S2UTrainConfig
from emova.train.s2u_anchor import S2UAnchorConfig
from emova.train.u2s_config import U2STrainConfig
from emova.yaml_io import parse_yaml, read_yaml_mapping

LOADERS = {
    "omni": lambda p: config_data(OmniTrainConfig, p, {}),
    "s2u": S2UTrainConfig.load,
    "s2u_anchor": S2UAnchorConfig.load,
    "reader": ReaderTrainConfig.load,
    "u2s": U2STrainConfig.load,
    "model": load_model_config,
    "fsdp": lambda p: fully_shard_module(None, p),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("text, match", [
    ("a: [1,\n", r"not valid YAML \(line 2, column 1\)"),
    ("lr: 1\n  bad indent: 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping of config keys at the top, got list"),
    ("just a string\n", "got str"),
])
def test_bad_yaml_names_the_file_and_the_problem(tmp_path, loader, text, match):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        LOADERS[loader](path)
    assert str(path) in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="no such config file"):
        read_yaml_mapping(tmp_path / "none.yaml")
    with pytest.raises(ValueError, match="cannot read it"):
        read_yaml_mapping(tmp_path)  # a directory
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="cannot read it"):
        read_yaml_mapping(tmp_path / "bin.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}


def test_overrides_with_bad_yaml_are_named():
    assert parse_overrides(["lr=1e-4", "tasks=[asr, tts]"]) == {"lr": 1e-4, "tasks": ["asr", "tts"]}
    with pytest.raises(ValueError, match=r"override 'tasks=\[asr, tts': not valid YAML"):
        parse_overrides(["tasks=[asr, tts"])
    assert parse_yaml("a: 1", "x") == {"a": 1}
