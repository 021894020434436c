"""The one validation-error text every layer shows (shardrec.api.errors)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from shardrec.api.errors import describe_errors, error_lines


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int


class _Outer(BaseModel):
    items: list[_Inner]
    name: str

    @model_validator(mode="after")
    def _named(self) -> _Outer:
        if self.name == "root":
            raise ValueError("name may not be 'root'")
        return self


def _errors(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate(data)
    return caught.value


def test_paths_are_dotted_and_messages_are_pydantic_s() -> None:
    exc = _errors({"items": [{"size": 1}, {"size": "x", "extra": 1}]})
    assert error_lines(exc.errors()) == [
        "items.1.size: Input should be a valid integer, unable to parse string as an integer",
        "items.1.extra: Extra inputs are not permitted",
        "name: Field required",
    ]
    assert describe_errors(exc.errors()) == "; ".join(error_lines(exc.errors()))


def test_a_model_level_error_is_named_root() -> None:
    exc = _errors({"items": [], "name": "root"})
    assert describe_errors(exc.errors()) == "(root): Value error, name may not be 'root'"


def test_limit_keeps_the_first_errors() -> None:
    exc = _errors({"items": [{"size": "a"}, {"size": "b"}, {"size": "c"}]})
    assert describe_errors(exc.errors(), limit=2) == (
        "items.0.size: Input should be a valid integer, unable to parse string as an integer; "
        "items.1.size: Input should be a valid integer, unable to parse string as an integer"
    )
