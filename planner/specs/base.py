"""Base class for every spec: strict, frozen, unknown keys refused.

Specs are validated once, at the boundary where YAML or the UI is read, and then passed
around as immutable values. ``extra="forbid"`` turns a typo in YAML into an error that names
the misspelled key instead of a silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def to_yaml_dict(self) -> dict:
        """A plain dict with units written as strings where exact; loads back to an equal spec."""
        return self.model_dump(mode="json", exclude_none=True)
