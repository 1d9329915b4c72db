"""A Griffe extension for the API reference: Sphinx markup in docstrings, as Markdown.

Our docstrings follow anyio's style (``:param:``, ``:raises:``, ``:class:`Batcher```).
mkdocstrings parses the fields, but prints roles such as ``:class:`Batcher``` as they are.
This turns a role into inline code, a ``::`` that opens a literal block into ``:``, and
drops the ``\\ `` escape. Only the rendered text changes; the docstrings stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :class:`Batcher`, :exc:`QueueFull`, :meth:`Batcher.many`, :func:`~batched.dynamically`
_ROLE = re.compile(r":(?:py:)?(?:class|exc|meth|func|data|attr|obj|mod|const):`~?([^`]+)`")
# "Example::" or a line of its own "::" before an indented literal block
_LITERAL = re.compile(r"(?m)(\S)::$|^\s*::$")
_ESCAPED_SPACE = re.compile(r"\\ ")


def rewrite(text: str) -> str:
    """The docstring ``text`` with Sphinx roles and literal-block markers as Markdown."""
    text = _ROLE.sub(r"`\1`", text)
    text = _LITERAL.sub(lambda m: f"{m.group(1)}:" if m.group(1) else "", text)
    return _ESCAPED_SPACE.sub("", text)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package before mkdocstrings parses it."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        _rewrite_docstring(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # The package itself does not go through on_object.
        _rewrite_docstring(pkg)


def _rewrite_docstring(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = rewrite(obj.docstring.value)
