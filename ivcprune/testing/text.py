"""Built-in English corpus and a locally trained BPE, so tiny tokenizers never need the network.

The corpus is written for this project (plain sentences about shapes, colours and positions, the
kind of prompts the harness sends) and expanded combinatorially to a few KB, enough to learn a
vocabulary of several hundred merges.
"""

from __future__ import annotations

import functools
import itertools

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

_PARAGRAPHS = [
    "Please look at the picture and answer the question with a single word or a short phrase.",
    "Where is the small red square? Give the bounding box of the object as four numbers.",
    "Is there a person in the image? Answer yes or no.",
    "Which option best describes the scene? Choose the letter of the correct answer.",
    "The photo shows a kitchen with a wooden table, two chairs and a window on the left side.",
    "A man in a blue jacket is riding a bicycle down a quiet street next to a row of trees.",
    "There are three dogs playing in the grass while a child throws a ball towards them.",
    "Describe the image in detail, including the colours, the objects and where they are.",
    "The answer is the region that contains the referring expression in the original image.",
    "Hint: read the text carefully before selecting one of the options below.",
    "How many windows can you see on the front of the building at the top right corner?",
    "What colour is the car parked in front of the shop near the bottom of the picture?",
    "You are a helpful assistant. Think about the question and reply in a clear sentence.",
    "The quick brown fox jumps over the lazy dog, and then it runs back into the forest.",
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: What is this? ASSISTANT: A cat.",
    "USER: Answer with the option's letter from the given choices directly. ASSISTANT: B",
    "Please provide the bounding box coordinate of the region this sentence describes: the man on the left.",
    # InternVL's default system message, so that tiny InternVL prompts stay short
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
]
_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
_SHAPES = ["square", "circle", "triangle", "stripe", "box", "ring"]
_PLACES = ["left of", "right of", "above", "below", "next to", "inside"]


def corpus() -> list[str]:
    """Deterministic training lines (a few KB), digits and punctuation included for box answers."""
    lines = list(_PARAGRAPHS)
    combos = itertools.product(_COLOURS, _SHAPES, _PLACES)
    for i, (colour, shape, place) in enumerate(combos):
        other = _COLOURS[(i * 3 + 1) % len(_COLOURS)]
        lines.append(f"the {colour} {shape} is {place} the {other} one at ({i % 97}, {i * 7 % 113}).")
    lines.append("0 1 2 3 4 5 6 7 8 9 10 25 50 100 250 500 1000 [12, 34, 56, 78] {'bbox_2d': [1, 2, 3, 4]}")
    return lines


def train_bytelevel_bpe(vocab_size: int = 700) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a GPT-2 style byte-level BPE; returns (vocab, merges) for a family tokenizer class to wrap."""
    vocab, merges = _bytelevel(vocab_size)
    return dict(vocab), list(merges)


@functools.lru_cache(maxsize=4)
def _bytelevel(vocab_size: int):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return _vocab_and_merges(tok)


def train_metaspace_bpe(vocab_size: int = 700, specials: tuple[str, ...] = ()):
    """Train a SentencePiece-like BPE (``▁`` word marker, byte fallback) as Llama tokenizers use."""
    vocab, merges = _metaspace(vocab_size, tuple(specials))
    return dict(vocab), list(merges)


@functools.lru_cache(maxsize=4)
def _metaspace(vocab_size: int, specials: tuple[str, ...]):
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials or []) + byte_tokens,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return _vocab_and_merges(tok)


def _vocab_and_merges(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    import json

    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges
