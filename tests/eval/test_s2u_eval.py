import pytest
import torch

from emova.data.speech.corpus import CorpusConfig, render_corpus
from emova.eval.metrics import edit_distance, error_rate, normalised_edit_distance, unit_perplexity
from emova.eval.s2u import evaluate_s2u, format_report
from emova.speech.s2u import S2UConfig, S2UModel
from emova.speech.tokenizer import SpeechTokenizer


def test_metrics():
    assert edit_distance("kitten", "sitting") == 3
    assert normalised_edit_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert normalised_edit_distance([1, 2], [3, 4]) == 1.0
    assert error_rate([["a", "b"], ["c"]], [["a"], ["c"]]) == pytest.approx(1 / 3)
    assert unit_perplexity([[1, 2, 3, 4]]) == pytest.approx(4.0)
    assert unit_perplexity([[7, 7, 7]]) == pytest.approx(1.0)


def test_eval_runs_on_a_small_corpus(tmp_path):
    render_corpus(tmp_path, CorpusConfig(n_train_sentences=0, n_heldout_per=3, n_heldout_style=12, n_heldout_probe=24),
                  workers=2, progress=False)
    torch.manual_seed(0)
    tok = SpeechTokenizer(S2UModel(S2UConfig.from_dict(dict(conv_channels=32, blocks=[{"layers": 1, "dim": 32, "heads": 2}],
                                                            post_dim=32, post_layers=1, post_heads=2))))
    r = evaluate_s2u(tok, tmp_path, progress=False)
    assert set(r["per"]) == {"flite:awb", "espeak:en-us+f4"}
    assert all(x["per"] > 0.5 for x in r["per"].values())  # an untrained model cannot recognise phones
    assert r["invariance"]["all_styles"]["pairs"] == 36
    for label in ("pitch", "emotion", "speaker"):
        for feats in ("units", "mel_stats"):
            assert 0.0 <= r["probes"][label][feats]["accuracy"] <= 1.0
    assert r["probes"]["speaker"]["mel_stats"]["accuracy"] > r["probes"]["speaker"]["units"]["chance"]
    assert r["usage"]["max_abs_units_minus_25hz"] <= 1.0
    assert "phone error rate" in format_report(r)
