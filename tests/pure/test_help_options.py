"""
Every ``-o`` keyword the parser accepts is listed in both help texts: ``rtunnel --help``
and ``twistd rtunnel --help`` (issue #16 found each leaving some out).
"""

from __future__ import annotations

import re

import pytest

from rtunnel.cli import HELP
from rtunnel.errors import SpecError
from rtunnel.openssh.options import SUPPORTED_OPTIONS, parse_option
from rtunnel.service import Options

KEYWORDS = sorted(SUPPORTED_OPTIONS.values())

HELP_TEXTS = {"rtunnel --help": HELP, "twistd rtunnel --help": str(Options())}


def _listed(keyword: str, text: str) -> bool:
    # A whole word, case and all: "Proxy" is not found in "ProxyJump", nor "Port" in "port".
    return re.search(rf"(?<![\w-]){re.escape(keyword)}(?![\w-])", text) is not None


@pytest.mark.parametrize("keyword", KEYWORDS)
def test_the_keywords_are_the_ones_the_parser_accepts(keyword: str) -> None:
    # Known to the parser: a value may be refused, the keyword is not.
    try:
        parsed = parse_option(f"{keyword}=x")
    except SpecError as error:
        assert "Bad configuration option" not in error.message
        assert "Unsupported option" not in error.message
    else:
        assert parsed is not None and parsed[0] == keyword


@pytest.mark.parametrize("where", sorted(HELP_TEXTS))
def test_every_option_keyword_is_in_the_help(where: str) -> None:
    missing = [k for k in KEYWORDS if not _listed(k, HELP_TEXTS[where])]
    assert missing == [], f"{where} leaves out {', '.join(missing)}"
