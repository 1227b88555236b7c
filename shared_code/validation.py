"""The API's one validation mechanism: small declarative specs for JSON values, and the one rule for stored text.

Every body the API accepts is declared as an :class:`Obj` of :class:`Prop` (``shared_code/tenant_config.py``,
``shared_code/intune/threat.py``, ``functions/identity_http.py``) and checked with ``spec.check(value, path)``; query
parameters and headers go through :func:`check_text` in ``functions/http_support.py``. A failure is a
:class:`~shared_code.errors.ValidationError` naming the field as a path (``guard.maxPercent``,
``enrollmentGroups[3]``, ``roleMappings[2].groupId``) with the problem type in ``kind``; the HTTP layer answers it
as 400 application/problem+json.

It lives in shared_code (not in the HTTP layer) because a stored tenant configuration is re-checked with the same
specs before a poll uses it (``shared_code/tenant_config.config_problem``): data written before a rule existed
must never crash-loop a tenant.

The text rule (:func:`text_problem`): every string is valid Unicode text — no lone surrogates (JSON can spell them,
``"\\ud800"``, but UTF-8 cannot encode them, so they fail later in a Graph ``$filter``, a Table write or an Intune
body), no noncharacters (U+FDD0..U+FDEF and U+xxFFFE/U+xxFFFF, Unicode §23.7 "not for open interchange"), no
bidirectional embeddings, overrides or isolates (U+202A..U+202E, U+2066..U+2069: they make a name display as another,
Unicode TR#9 / CVE-2021-42574 "Trojan Source"), and no C0/C1 controls or DEL. Marks such as U+200E/U+200F stay
allowed: right-to-left names legitimately use them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared_code.domain.ids import is_guid
from shared_code.errors import ValidationError

_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr((plane << 16) | 0xFFFE)}{chr((plane << 16) | 0xFFFF)}" for plane in range(17)
)
_NOT_TEXT = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069{_NONCHARACTERS}]")


def text_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text for the API, or ``None`` when it is."""
    found = _NOT_TEXT.search(text)
    if found is None:
        return None
    cp = ord(found.group())
    if 0xD800 <= cp <= 0xDFFF:
        what = "a lone surrogate"
    elif 0x202A <= cp <= 0x202E or 0x2066 <= cp <= 0x2069:
        what = "a bidirectional override or isolate"
    elif cp < 0x20 or 0x7F <= cp <= 0x9F:
        what = "a control character"
    else:
        what = "a Unicode noncharacter"
    return f"{what} (U+{cp:04X}) at position {found.start()}"


def check_text(value: str, path: str, kind: str = "validation-error") -> str:
    """``value`` unchanged when it is valid Unicode text (see the module docstring).

    Raises:
        ValidationError: naming ``path``.
    """
    problem = text_problem(value)
    if problem is not None:
        raise ValidationError(f"{path} must be valid Unicode text; it contains {problem}", field=path, kind=kind)
    return value


def safe_name(name: str) -> str:
    """A client-supplied name fit to appear in a field path or detail (invalid characters escaped, cut at 64)."""
    cut = name[:64]
    return _NOT_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", cut)


def _fail(path: str, detail: str, kind: str = "validation-error") -> ValidationError:
    return ValidationError(detail, field=path, kind=kind)


class Spec:
    """A value specification; ``check`` returns the (normalised) value or raises a ValidationError naming ``path``."""

    def check(self, value: Any, path: str) -> Any:  # pragma: no cover - abstract
        """The normalised value.

        Raises:
            ValidationError: naming ``path``.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Spec):
    """A string of valid Unicode text with a length range, optional pattern and allowed values.

    ``strip`` normalises surrounding white space away; with ``strip=False`` the string is kept as sent (group names:
    Entra compares them exactly) but a blank one is still refused unless ``min_length`` is 0.
    """

    max_length: int = 256
    min_length: int = 1
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    strip: bool = True

    def check(self, value: Any, path: str) -> str:
        """See :class:`Spec`."""
        if not isinstance(value, str):
            raise _fail(path, f"{path} must be a string")
        text = value.strip() if self.strip else value
        if self.enum is not None:
            if text not in self.enum:
                raise _fail(path, f"{path} must be one of: {', '.join(self.enum)}")
            return text
        if len(text) < self.min_length or len(text) > self.max_length:
            raise _fail(path, f"{path} must be {self.min_length} to {self.max_length} characters")
        if self.min_length and not text.strip():
            raise _fail(path, f"{path} must not be blank")
        check_text(text, path)
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise _fail(path, f"{path} has an invalid format")
        return text


@dataclass(frozen=True)
class Guid(Spec):
    """A GUID string (normalised to lower case)."""

    def check(self, value: Any, path: str) -> str:
        """See :class:`Spec`."""
        if not is_guid(value):
            raise _fail(path, f"{path} must be a GUID")
        return str(value).lower()


@dataclass(frozen=True)
class Int(Spec):
    """An integer in [minimum, maximum]: a JSON number without fraction (JSON Schema counts 33.0 as an integer);
    booleans refused."""

    minimum: int = 0
    maximum: int = 2**31 - 1

    def check(self, value: Any, path: str) -> int:
        """See :class:`Spec`."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, f"{path} must be an integer")
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            raise _fail(path, f"{path} must be an integer")
        number = int(value)
        if not self.minimum <= number <= self.maximum:
            raise _fail(path, f"{path} must be an integer between {self.minimum} and {self.maximum}")
        return number


@dataclass(frozen=True)
class Num(Spec):
    """A finite number in [minimum, maximum] (booleans refused)."""

    minimum: float = 0.0
    maximum: float = 1e9

    def check(self, value: Any, path: str) -> float:
        """See :class:`Spec`."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(path, f"{path} must be a number")
        if not self.minimum <= value <= self.maximum:
            raise _fail(path, f"{path} must be a number between {self.minimum:g} and {self.maximum:g}")
        return float(value)


@dataclass(frozen=True)
class Bool(Spec):
    """A JSON boolean."""

    def check(self, value: Any, path: str) -> bool:
        """See :class:`Spec`."""
        if not isinstance(value, bool):
            raise _fail(path, f"{path} must be true or false")
        return value


@dataclass(frozen=True)
class DateTime(Spec):
    """An RFC 3339 date-time with a time zone (``Z`` or an offset); returned as the original string."""

    def check(self, value: Any, path: str) -> str:
        """See :class:`Spec`."""
        if not isinstance(value, str) or len(value) > 40:
            raise _fail(path, f"{path} must be an RFC 3339 date-time")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise _fail(path, f"{path} must be an RFC 3339 date-time") from None
        if parsed.tzinfo is None or "T" not in value.upper():
            raise _fail(path, f"{path} must be an RFC 3339 date-time with a time zone")
        return value


@dataclass(frozen=True)
class Json(Spec):
    """A free-form JSON value (of the top-level ``types``) that the API stores or forwards as it is: every string and
    key in it is checked with the text rule, and its compact JSON form is at most ``max_chars`` characters."""

    max_chars: int = 2000
    types: tuple[type, ...] = (dict, list, str, int, float, bool)

    def check(self, value: Any, path: str) -> Any:
        """See :class:`Spec`."""
        wrong_bool = isinstance(value, bool) and bool not in self.types
        if wrong_bool or not isinstance(value, self.types):
            names = " or ".join("an object" if t is dict else "an array" if t is list else t.__name__
                                for t in self.types)
            raise _fail(path, f"{path} must be {names}")
        _walk_text(value, path)
        if len(json.dumps(value, separators=(",", ":"), ensure_ascii=False)) > self.max_chars:
            raise _fail(path, f"{path} is limited to {self.max_chars} characters of JSON")
        return value


def _walk_text(value: Any, path: str) -> None:
    if isinstance(value, str):
        check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            sub = join(path, str(key))
            check_text(str(key), sub)
            _walk_text(item, sub)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk_text(item, f"{path}[{index}]")


@dataclass(frozen=True)
class List(Spec):
    """A JSON array of ``item`` with a size range; ``unique`` refuses duplicates (after normalisation)."""

    item: Spec
    max_items: int = 100
    min_items: int = 0
    unique: bool = False

    def check(self, value: Any, path: str) -> list[Any]:
        """See :class:`Spec`."""
        if not isinstance(value, list):
            raise _fail(path, f"{path} must be an array")
        if len(value) < self.min_items or len(value) > self.max_items:
            raise _fail(path, f"{path} must have {self.min_items} to {self.max_items} items")
        out = [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if self.unique:
            seen: set[str] = set()
            for i, v in enumerate(out):
                key = json.dumps(v, sort_keys=True)
                if key in seen:
                    raise _fail(f"{path}[{i}]", f"{path} must not contain duplicates")
                seen.add(key)
        return out


@dataclass(frozen=True)
class Prop:
    """A property of an :class:`Obj`: its spec, whether it is required, whether ``null`` is allowed."""

    spec: Spec
    required: bool = False
    nullable: bool = False


@dataclass(frozen=True)
class Obj(Spec):
    """A JSON object with exactly the listed properties: unknown ones are refused (kind ``unknown-field``)."""

    props: Mapping[str, Prop] = field(default_factory=dict)
    max_properties: int | None = None
    # For maps (e.g. role mappings) rather than records: every key must match ``key`` and every value ``values``.
    values: Spec | None = None
    key: Str | None = None

    def check(self, value: Any, path: str) -> dict[str, Any]:
        """See :class:`Spec`; the top level (``path`` empty) is named ``body`` with kind ``invalid-body``."""
        where = path or "body"
        if not isinstance(value, dict):
            raise _fail(where, f"{where} must be a JSON object", "invalid-body" if not path else "validation-error")
        if self.max_properties is not None and len(value) > self.max_properties:
            raise _fail(where, f"{where} must have at most {self.max_properties} properties")
        out: dict[str, Any] = {}
        if self.values is not None:
            key_spec = self.key or Str(max_length=256)
            for k, v in value.items():
                sub = join(path, k)
                key_spec.check(k, sub)
                out[k] = self.values.check(v, sub)
            return out
        for name in value:
            if name not in self.props:
                raise _fail(join(path, name), f"unknown field {join(path, name)!r}", "unknown-field")
        for name, prop in self.props.items():
            sub = join(path, name)
            if name not in value:
                if prop.required:
                    raise _fail(sub, f"{sub} is required")
                continue
            if value[name] is None:
                if not prop.nullable:
                    raise _fail(sub, f"{sub} must not be null")
                out[name] = None
                continue
            out[name] = prop.spec.check(value[name], sub)
        return out


def join(path: str, name: str) -> str:
    """The API's one field-path convention: ``guard.maxPercent``, ``roleMappings[2].groupId``.

    Client-supplied names are cut at 64 characters and their invalid characters escaped, so a detail never carries
    them (a lone surrogate would make the problem document itself unencodable).
    """
    safe = safe_name(name)
    return f"{path}.{safe}" if path else safe
