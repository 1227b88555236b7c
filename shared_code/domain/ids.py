"""The one rule for object and tenant ids: canonical GUIDs (8-4-4-4-12 hexadecimal digits, nothing else).

``uuid.UUID`` is not used to validate: it also accepts braces, ``urn:uuid:`` prefixes and missing dashes and rewrites
them, which would give one tenant several spellings (and partition keys). ``fullmatch`` rather than ``match`` with
``$``, which also matches before a trailing newline.
"""

from __future__ import annotations

import re

GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_guid(value: object) -> bool:
    """True for a canonical GUID string (either case)."""
    return isinstance(value, str) and GUID_RE.fullmatch(value) is not None
