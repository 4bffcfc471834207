"""A problem the contract finds, and the base of every contract model."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, ConfigDict

Location = tuple[str | int, ...]


class ContractModel(BaseModel):
    # strict: YAML and JSON already give typed scalars, so '8' for an int is an authoring mistake,
    # not a value to coerce; extra=forbid: a misspelt key must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ContractProblem:
    """``loc`` is relative to the checked mapping (a fault body, the engine settings): the scenario
    validator prefixes it with ``fault`` or ``engine`` to name the line; the server shows ``message``,
    which names the key itself where that reads better."""

    loc: Location
    message: str
