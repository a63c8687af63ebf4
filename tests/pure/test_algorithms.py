"""
Algorithm lists from the command line and ssh_config options: ``-c``, ``-m``, ``-o Ciphers``,
``-o MACs``, ``-o KexAlgorithms``, ``-o HostKeyAlgorithms``, ``-o RekeyLimit``, and what
reaches ReverseTunnel.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from rtunnel import NegotiationError, SpecError
from rtunnel.cli import CommandLineExit, parse_command_line
from rtunnel.client.transport import _algorithms
from rtunnel.client.transport._cpu import HAS_AES_INSTRUCTIONS, aes_instructions
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.options import parse_option, parse_rekey_limit
from rtunnel.service import build_tunnel, describe_error


def _resolved(kind: str, spec: str) -> tuple[str, ...]:
    return tuple(_algorithms.resolve(kind, spec))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The lists come resolved, OpenSSH's modifiers applied, as the tunnel takes them.
        ("Ciphers=aes128-ctr", ("Ciphers", _resolved("cipher", "aes128-ctr"))),
        ("ciphers +aes128-cbc", ("Ciphers", _resolved("cipher", "+aes128-cbc"))),
        ("MACs -hmac-sha2-512*", ("MACs", _resolved("mac", "-hmac-sha2-512*"))),
        (
            "KexAlgorithms=^diffie-hellman-group14-sha1",
            ("KexAlgorithms", _resolved("kex", "^diffie-hellman-group14-sha1")),
        ),
        (
            "HostKeyAlgorithms ssh-ed25519,rsa-sha2-256",
            ("HostKeyAlgorithms", (("ssh-ed25519", "rsa-sha2-256"), False)),
        ),
        (
            "HostKeyAlgorithms -ssh-rsa",
            ("HostKeyAlgorithms", (_resolved("host key", "-ssh-rsa"), True)),
        ),
        ("RekeyLimit 1M", ("RekeyLimit", (str(1 << 20), ""))),
        ("RekeyLimit=default 1h", ("RekeyLimit", ("", "3600"))),
        ("RekeyLimit 2G none", ("RekeyLimit", (str(2 << 30), "none"))),
        ("RekeyLimit 0", ("RekeyLimit", ("0", ""))),
    ],
)
def test_options_parse(text: str, expected: tuple[str, object]) -> None:
    assert parse_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Ciphers=twofish-cbc", "command-line line 0: Bad SSH2 cipher spec 'twofish-cbc'."),
        ("MACs=umac-64@openssh.com", "command-line line 0: Bad SSH2 MAC spec"),
        ("KexAlgorithms=-*", "command-line line 0: Bad SSH2 KexAlgorithms '-*'."),
        ("HostKeyAlgorithms=ssh-foo", "command-line line 0: Bad key types"),
        ("RekeyLimit 10", "RekeyLimit too small"),
        ("RekeyLimit lots", "Bad number"),
        ("RekeyLimit 1G soon", "invalid time value"),
        ("RekeyLimit 1G 1h more", "extra arguments"),
    ],
)
def test_bad_options_in_openssh_words(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_option(text)
    assert str(info.value).startswith("command-line line 0: ")
    assert message in str(info.value)


def test_parse_rekey_limit_suffixes() -> None:
    assert parse_rekey_limit(["16"]) == ("16", "")
    assert parse_rekey_limit(["4k"]) == ("4096", "")
    assert parse_rekey_limit(["3m", "30"]) == (str(3 << 20), "30")


def test_cipher_and_mac_flags_override_options_and_are_checked() -> None:
    inv = parse_command_line(["-o", "Ciphers=aes128-ctr", "-c", "^aes256-gcm@openssh.com", "-m",
                              "hmac-sha2-512", "-R", "0:h:1", "host"])  # fmt: skip
    assert inv.options.tunnel["ciphers"] == _resolved("cipher", "^aes256-gcm@openssh.com")
    assert inv.options.tunnel["macs"] == ("hmac-sha2-512",)
    with pytest.raises(CommandLineExit) as info:
        parse_command_line(["-c", "twofish-cbc", "-R", "0:h:1", "host"])
    assert info.value.text.startswith("Unknown cipher type 'twofish-cbc'.")
    with pytest.raises(CommandLineExit) as info:
        parse_command_line(["-mnope", "-R", "0:h:1", "host"])
    assert info.value.text.startswith("Unknown mac type 'nope'.")


def test_first_option_wins_and_everything_reaches_the_tunnel() -> None:
    options = ClientOptions(user="u", port=22)
    for text in [
        "Ciphers=-chacha20-poly1305@openssh.com",
        "Ciphers=aes128-ctr",
        "MACs=+hmac-sha1",
        "KexAlgorithms=curve25519-sha256",
        "HostKeyAlgorithms=+ssh-rsa",
        "RekeyLimit=64M 10m",
    ]:
        options.apply_option(text)
    tunnel = build_tunnel(MemoryReactorClock(), "h", options, report=lambda *a: None)
    assert list(tunnel.options.algorithms.ciphers) == [
        c for c in _algorithms.DEFAULT_CIPHERS if "chacha" not in c
    ]
    assert list(tunnel.options.algorithms.macs) == [*_algorithms.DEFAULT_MACS, "hmac-sha1"]
    assert list(tunnel.options.algorithms.kex_algorithms) == ["curve25519-sha256"]
    assert tunnel.options.algorithms.host_key_algorithms[-1] == "ssh-rsa"
    assert (tunnel.options.algorithms.rekey_bytes, tunnel.options.algorithms.rekey_seconds) == (
        64 << 20,
        600.0,
    )


def test_defaults_reach_the_tunnel() -> None:
    tunnel = build_tunnel(
        MemoryReactorClock(), "h", ClientOptions(user="u", port=22), report=lambda *a: None
    )
    assert list(tunnel.options.algorithms.ciphers) == list(_algorithms.DEFAULT_CIPHERS)
    assert (tunnel.options.algorithms.rekey_bytes, tunnel.options.algorithms.rekey_seconds) == (
        _algorithms.DEFAULT_REKEY_BYTES,
        None,
    )


def test_negotiation_error_is_printed_as_is() -> None:
    error = NegotiationError(
        "No matching cipher algorithm found. We offered: a. The server offered: b.",
        "cipher",
        ("a",),
        ("b",),
    )
    assert describe_error(error, user="u", host="h") == f"rtunnel: {error.message}"
    assert error.code == 1003


def test_compression_flag_and_option_reach_the_tunnel() -> None:
    inv = parse_command_line(["-C", "-R", "0:h:1", "host"])
    assert inv.options.tunnel["compression"] is True
    options = ClientOptions(user="u", port=22)
    options.apply_option("Compression=yes")
    tunnel = build_tunnel(MemoryReactorClock(), "h", options, report=lambda *a: None)
    assert tunnel.options.algorithms.compression is True
    off = build_tunnel(
        MemoryReactorClock(), "h", ClientOptions(user="u", port=22), report=lambda *a: None
    )
    assert off.options.algorithms.compression is False


_X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae sse4_2 {aes}avx avx2 sha_ni
bugs\t\t: spectre_v1
"""
_ARM64_CPUINFO = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm {aes}pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize(
    ("cpuinfo", "system", "machine", "expected"),
    [
        (_X86_CPUINFO.format(aes="aes "), "Linux", "x86_64", True),
        (_X86_CPUINFO.format(aes=""), "Linux", "x86_64", False),
        # "vaes" or "aes_whatever" is not "aes": whole words only.
        (_X86_CPUINFO.format(aes="vaes "), "Linux", "x86_64", False),
        (_ARM64_CPUINFO.format(aes="aes "), "Linux", "aarch64", True),
        (_ARM64_CPUINFO.format(aes=""), "Linux", "aarch64", False),
        ("processor\t: 0\n", "Linux", "riscv64", False),
        (None, "Darwin", "arm64", True),
        (None, "Darwin", "x86_64", False),
        (None, "Windows", "AMD64", False),
    ],
)
def test_aes_instructions_from_the_processor_description(
    cpuinfo: str | None, system: str, machine: str, expected: bool
) -> None:
    assert aes_instructions(cpuinfo, system, machine) is expected


def test_aes_gcm_leads_only_where_the_processor_has_aes_instructions() -> None:
    aead = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    chacha = ["chacha20-poly1305@openssh.com"]
    ctr = ["aes128-ctr", "aes192-ctr", "aes256-ctr"]
    assert list(_algorithms.default_ciphers(True)) == [*aead, *chacha, *ctr]
    # OpenSSH's order (ssh_config(5), 9.2).
    assert list(_algorithms.default_ciphers(False)) == [*chacha, *aead, *ctr]
    assert _algorithms.default_ciphers(HAS_AES_INSTRUCTIONS) == _algorithms.DEFAULT_CIPHERS
