"""`emova chat --interactive`: typed turns with history, blank lines skipped, quit words and EOF end it, a
refused turn is reported and the session goes on."""

import builtins

import pytest

import emova.cli as cli


class FakeResult:
    def __init__(self, text):
        self.text, self.transcript, self.audio = text, None, None
        self.emotion = self.pitch = self.user_emotion = self.user_pitch = None

    def as_message(self):
        return {"role": "assistant", "content": self.text}


class FakeEmova:
    def __init__(self):
        self.calls = []

    def chat(self, messages, voice="female", style_override=None):
        self.calls.append(messages)
        said = messages[-1]["content"][-1]["text"]
        if said == "too long":
            raise ValueError("the conversation is 9999 tokens long")
        return FakeResult(f"reply {len(self.calls)}")


@pytest.fixture
def fake(monkeypatch):
    m = FakeEmova()
    monkeypatch.setattr(cli, "_load_emova", lambda name: m)
    return m


def _typing(monkeypatch, lines):
    feed = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)


def test_interactive_session(fake, monkeypatch, capsys):
    _typing(monkeypatch, ["", "   ", "first", "too long", "second", "/quit", "never sent"])
    assert cli.main(["chat", "--interactive", "--out", ""]) == 0
    out, err = capsys.readouterr()
    assert "reply 1" in out and "reply 3" in out and "9999 tokens long" in err
    texts = [[m["content"] if isinstance(m["content"], str) else m["content"][-1]["text"] for m in c] for c in fake.calls]
    assert texts == [["first"], ["first", "reply 1", "too long"], ["first", "reply 1", "second"]]  # history kept


def test_eof_ends_the_session_and_a_first_text_is_answered_first(fake, monkeypatch, capsys):
    _typing(monkeypatch, [])
    assert cli.main(["chat", "--interactive", "--text", "hello", "--out", ""]) == 0
    assert len(fake.calls) == 1 and "reply 1" in capsys.readouterr().out


def test_without_interactive_a_refused_turn_is_an_error(fake, capsys):
    assert cli.main(["chat", "--text", "too long", "--out", ""]) == 2
    assert "9999 tokens long" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["tts", "hello", "--out"], ["chat", "--text", "hi", "--out"],
                                  ["speech", "decode", "--units", "1 2 3", "--out"]])
def test_an_output_file_audio_cannot_be_written_to_is_refused_before_any_work(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_emova", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli.main([*argv, str(tmp_path / "reply.txt")]) == 2
    assert "reply.txt" in capsys.readouterr().err and not (tmp_path / "reply.txt").exists()
