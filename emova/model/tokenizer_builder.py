"""Offline tokenizer for tests and the tiny model (no hub access needed).

A byte-level BPE trained on a small built-in English text, then, in this order (the order of the released
Qwen2.5 EMOVA vocabularies): the Qwen2 specials `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, the 4096
speech tokens `<|speech_0|>` … `<|speech_4095|>` (plain added tokens, kept by `decode(skip_special_tokens=True)`),
and `<image>`. The model's vocabulary is this length rounded up to a multiple of 128.
Official checkpoints bring their own tokenizer; never use this one with them.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from emova.model.prompts import ASR_PROMPT, CHAT_PROMPT, DEFAULT_SYSTEM_PROMPT, TTS_PROMPT

NUM_SPEECH_UNITS = 4096
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IMAGE_TOKEN = "<image>"
DEFAULT_BPE_SIZE = 768  # what the built-in text supports; total tokens 4868 → model vocab 4992
VOCAB_MULTIPLE = 128

_COLORS = "red green blue yellow purple orange black white gray"
_SHAPES = "circle square triangle circles squares triangles shape shapes"
_BUILTIN_TEXT = f"""
{DEFAULT_SYSTEM_PROMPT} {ASR_PROMPT} {TTS_PROMPT} {CHAT_PROMPT}
What color is the circle? Which color is the square? What is the triangle's color? The circle is red.
How many shapes are there? There are three shapes. How many circles are in the picture? There are two circles.
Where is the blue square? It is on the left. It is on the right. It is at the top. It is at the bottom.
It is in the center. Which word is written in the image? The word is hello. Which digit is written? Seven.
What shape is green? The green shape is a triangle. Is there a yellow circle? Yes, there is. No, there is not.
zero one two three four five six seven eight nine ten eleven twelve 0 1 2 3 4 5 6 7 8 9 10
{_COLORS} {_SHAPES} left right top bottom center middle above below next to
I just got the job, I am so happy! That is wonderful news, congratulations. My dog died yesterday.
I am so sorry for your loss, that is very sad. You are stupid and useless. Please do not talk to me like that.
What time is it? It is three o'clock. How are you today? I am fine, thank you. Good morning. Good night.
I passed my exam! I lost my wallet. I won the lottery. My friend moved away. The weather is nice today.
neutral happy sad angry surprised disgusted fearful low normal high female male slow fast speed pitch emotion
user assistant system question response text speech json format output example units recognize synthesize
{{"user question text": "what color is the circle", "user question emotion": "neutral",
"user question pitch": "normal", "assistant response text": "The circle is red.",
"assistant response emotion": "neutral", "assistant response pitch": "normal", "assistant response speech": ""}}
The quick brown fox jumps over the lazy dog. A picture of a small red circle on a white background.
Can you describe the image? The image shows a blue square and a green triangle. Thank you very much.
"""


def speech_token(k: int) -> str:
    return f"<|speech_{k}|>"


def padded_vocab_size(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Smallest multiple of `multiple` that is >= n."""
    return ((n + multiple - 1) // multiple) * multiple


def build_tokenizer(
    bpe_vocab_size: int = DEFAULT_BPE_SIZE, extra_text: str = "", num_speech_units: int = NUM_SPEECH_UNITS
) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE and add the special, speech and image tokens (deterministic)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in (_BUILTIN_TEXT + "\n" + extra_text).splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    if tok.get_vocab_size() != bpe_vocab_size:
        raise ValueError(
            f"the built-in text gave only {tok.get_vocab_size()} BPE entries, {bpe_vocab_size} requested; "
            f"lower bpe_vocab_size or pass more extra_text"
        )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(speech_token(k), normalized=False) for k in range(num_speech_units)])
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[IMAGE_TOKEN, "<|im_start|>"],
        padding_side="right",
        model_max_length=4096,
    )


def save_tokenizer(out_dir: str | Path, **kwargs: object) -> PreTrainedTokenizerFast:
    """Build and `save_pretrained` the tokenizer into out_dir (writes added_tokens.json too)."""
    tok = build_tokenizer(**kwargs)  # type: ignore[arg-type]
    tok.save_pretrained(str(out_dir))
    return tok
