"""Turn pydantic's ValidationError into our `SpecError` that names the field *and* the fix.

Pydantic already names the field; what it cannot know is what the user should write instead.
Each model passes a `hints` table (field → fix). If a validator raised one of our own errors
(e.g. `UnknownAcceleratorError` with its closest names), that error is re-raised as is.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Mapping, NoReturn

from pydantic import BaseModel, ValidationError

from skyward_ray.errors import SpecError


class SpecModel(BaseModel):
    """A user-facing spec: invalid input raises `SpecError` naming the field and the fix.

    Subclasses set `_spec_hints` (field → what to write instead); the model's name in messages is
    the class name.
    """

    _spec_hints: ClassVar[Mapping[str, str]] = {}

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise_spec_error(type(self).__name__, error, self._spec_hints)


def raise_spec_error(model: str, error: ValidationError, hints: Mapping[str, str]) -> NoReturn:
    details = error.errors(include_url=False)
    for detail in details:
        original = (detail.get("ctx") or {}).get("error")
        if isinstance(original, SpecError):
            raise original from None
    lines = []
    for detail in details:
        location = ".".join(str(part) for part in detail["loc"]) or "(arguments)"
        field = str(detail["loc"][0]) if detail["loc"] else ""
        message = detail["msg"]
        if detail["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, list(hints), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            message = f"unknown field; {guess}{model} takes: {', '.join(hints)}"
        got = _short(detail.get("input"))
        hint = hints.get(field, "")
        lines.append(f"{model}.{location}: {message} (got {got})" + (f". Fix: {hint}" if hint else ""))
    raise SpecError("\n".join(lines)) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
