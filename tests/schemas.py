"""Pydantic models the structured-output tests ask for: nested objects, enums, arrays, bounds.

Every string and array is bounded, so an answer that follows the schema always ends well within
the tests' max_tokens, whatever a small model would like to write.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PROMPT", "Person", "person_format"]

PROMPT = (
    "Describe a fictional person as JSON: name, age, role (admin, editor or viewer), "
    "one to three skills, and an address with a city and a country."
)


class Address(BaseModel):
    """A nested object with an enum."""

    model_config = ConfigDict(extra="forbid")

    city: str = Field(min_length=1, max_length=24)
    country: Literal["France", "Germany", "Japan", "Brazil"]


class Person(BaseModel):
    """The answer: required fields, an integer range, an enum, an array, a nested object."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=24)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "editor", "viewer"]
    skills: list[Annotated[str, Field(max_length=16)]] = Field(min_length=1, max_length=3)
    address: Address


def person_format() -> dict[str, Any]:
    """`response_format` asking for a Person: pydantic's own JSON Schema of it, strict."""
    schema = Person.model_json_schema()
    return {
        "type": "json_schema",
        "json_schema": {"name": "Person", "schema": schema, "strict": True},
    }
