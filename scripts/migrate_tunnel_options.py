"""
One-off rewrite for issue #16's options step: ``ReverseTunnel(reactor, host, port,
user=..., auth=..., **kw)`` becomes ``ReverseTunnel(reactor, host, port,
options=TunnelOptions.create(user=..., auth=..., **kw))``; ``clock=`` stays a constructor
argument. ``TunnelOptions`` is imported next to ``ReverseTunnel``. Run ``ruff format`` and
``ruff check --fix`` afterwards for the layout and the import order.

    python scripts/migrate_tunnel_options.py FILE...

Kept so that a branch still written against the old constructor (or a file moved
meanwhile) can be brought over the same way; delete it once every branch is merged.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

KEEP = {"clock", "options"}


def _offsets(source: str) -> list[int]:
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _comments(code: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return [t.string for t in tokens if t.type == tokenize.COMMENT]


def rewrite(source: str) -> tuple[str, int]:
    """The source with every old-style call rewritten, and how many were."""
    tree = ast.parse(source)
    starts = _offsets(source)

    def at(line: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets.
        text = source[starts[line - 1] : starts[line]]
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8"))

    def text(node: ast.AST) -> str:
        assert node.end_lineno is not None and node.end_col_offset is not None
        return source[at(node.lineno, node.col_offset) : at(node.end_lineno, node.end_col_offset)]

    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "ReverseTunnel")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "ReverseTunnel")
        )
        and any(k.arg not in KEEP for k in node.keywords)
    ]
    out = source
    # From the end, so that earlier offsets stay valid.
    for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset), reverse=True):
        for comment in _comments(text(call)):
            # A "type: ignore" on an argument has nothing left to silence: mypy does not
            # check the tests, and create() takes the settings' own types.
            if not comment.startswith("# type: ignore"):
                raise SystemExit(f"line {call.lineno}: comment {comment!r} inside the call")
        settings = [
            text(k) if k.arg is not None else f"**{text(k.value)}"
            for k in call.keywords
            if k.arg not in KEEP
        ]
        kept = [text(k) for k in call.keywords if k.arg in KEEP]
        arguments = [
            *(text(a) for a in call.args),
            f"options=TunnelOptions.create({', '.join(settings)})",
            *kept,
        ]
        new = f"{text(call.func)}({', '.join(arguments)})"
        assert call.end_lineno is not None and call.end_col_offset is not None
        start = at(call.lineno, call.col_offset)
        end = at(call.end_lineno, call.end_col_offset)
        out = out[:start] + new + out[end:]
    if calls and not re.search(
        r"^\s*(from .* import .*\bTunnelOptions\b|TunnelOptions,)", source, re.M
    ):
        out = _add_import(out)
    return out, len(calls)


def _add_import(source: str) -> str:
    """``TunnelOptions`` added to each ``from rtunnel import`` that brings ReverseTunnel."""
    lines = source.splitlines(keepends=True)
    done = False
    for index, line in reversed(list(enumerate(lines))):
        stripped = line.strip()
        if not stripped.startswith("from rtunnel import"):
            continue
        if stripped.endswith("("):
            indent = line[: len(line) - len(line.lstrip())]
            lines.insert(index + 1, f"{indent}    TunnelOptions,\n")
            done = True
        elif "ReverseTunnel" in line:
            lines[index] = line.replace("ReverseTunnel", "ReverseTunnel, TunnelOptions", 1)
            done = True
    if not done:
        raise SystemExit("no import of ReverseTunnel found; add TunnelOptions by hand")
    return "".join(lines)


def main(paths: list[str]) -> None:
    for name in paths:
        path = Path(name)
        source = path.read_text()
        new, count = rewrite(source)
        if count:
            path.write_text(new)
            print(f"{path}: {count} call(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
