"""Shared fixtures: offline assets (skip locally when absent, fail under CI=true) and test sentences."""

from __future__ import annotations

import os

import pytest
from _assets import require_asset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Twenty sentences written for these tests: English, Chinese, mixed, digits, emoji.
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today.",
    "Transformers replaced recurrent networks for most language tasks.",
    "She sold the old bicycle for twenty-five dollars.",
    "Rain is expected over the mountains by Thursday evening.",
    "The quick brown fox jumps over the lazy dog.",
    "Can you tell me where the nearest train station is?",
    "Attention is computed as softmax(QK^T / sqrt(d)) V.",
    "He moved to Berlin in 2019 and never looked back.",
    "今天天气真好。",
    "我们明天去公园散步吧。",
    "机器学习正在改变世界。",
    "这本书的作者是一位著名的科学家。",
    "北京是中国的首都。",
    "I love 北京 and its food 🍜!",
    "Emoji test: 🙂🚀✨ work too.",
    "The year 1998 had 365 days; 2024 had 366.",
    "Unbelievably, the un-tokenizable word 'floccinaucinihilipilification' tokenizes.",
    "   Leading and trailing spaces, and  double  spaces.  ",
]


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)


@pytest.fixture(scope="session")
def minilm_dir():
    from lmforge.assets import minilm_dir as get

    return require_asset(get)
