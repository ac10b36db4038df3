"""CSV cells a spreadsheet opens as text, never as a formula (every CSV export uses this).

The policy (docs/security.md, "CSV exports"), for outside strings only (models,
providers, projects, tags, hostnames, machine ids): numbers, dates and our own
words are written as they are.

- A cell whose text starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return (after any leading spaces) gets a leading ``'``: the OWASP rule, so
  Excel, LibreOffice and Google Sheets show the text instead of running it.
- The same characters right after a ``;`` or ``,`` inside the cell get a ``'``
  before them: Excel in a locale whose list separator is ``;`` (German, French…)
  splits a comma-separated file at every ``;``, quoted or not, so
  ``x;=HYPERLINK(…)`` would start a cell of its own there.

The FOCUS export follows the same rule: a FOCUS file is read by programs but
also opened in spreadsheets, and no real provider, model or project name
starts with these characters, so machine readers see real names unchanged.
Pure: no I/O.
"""

from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_AFTER_SEPARATOR = re.compile(r"([;,])(\s*[=+\-@])")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs as a formula (see the module's policy)."""
    text = _AFTER_SEPARATOR.sub(r"\1'\2", text)
    return "'" + text if text.lstrip(" ")[:1] in FORMULA_START else text
