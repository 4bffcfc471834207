"""One scenario file, every mode: the scenario as it runs in one mode, its ``per_mode`` override merged in.

The merge works on the YAML data, before pydantic, so that an override says only what differs
(``{fault: {at_step: null, after_warmup_steps: 1}}``) and the merged mapping is checked as a whole
scenario. ``origin`` remembers which keys an override gave, so that a problem in the merged
scenario names the line the author wrote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from harness.scenario.problems import Location

# Keys that belong to the scenario file, not to a run in one mode.
FILE_ONLY_KEYS = ("per_mode", "not_applicable")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ModeView:
    mode: str
    data: dict[str, object]  # the scenario mapping as it runs in ``mode``: model_modes is [mode]
    origin: dict[Location, Location]  # a key of ``data`` -> where the file gave it, for keys an override gave

    def source_loc(self, loc: Location) -> Location:
        """Where the file wrote ``loc`` of the merged mapping: in the override, or in the scenario itself."""
        for end in range(len(loc), 0, -1):
            source = self.origin.get(loc[:end])
            if source is not None:
                return (*source, *loc[end:])
        return loc


def view_in_mode(data: Mapping[str, object], mode: str) -> ModeView:
    """``data`` (a scenario mapping that passed the shape check) as it runs in ``mode``."""
    merged = {key: value for key, value in data.items() if key not in FILE_ONLY_KEYS}
    modes = data.get("model_modes")
    listed = list(modes) if isinstance(modes, list) else []
    merged["model_modes"] = [mode]
    origin: dict[Location, Location] = {}
    if mode in listed:
        origin[("model_modes", 0)] = ("model_modes", listed.index(mode))
    per_mode = data.get("per_mode")
    override = per_mode.get(mode) if isinstance(per_mode, dict) else None
    for key, value in (override or {}).items():
        if value is not None:
            merged[key] = _merge(merged.get(key), value, (key,), ("per_mode", mode, key), origin)
    return ModeView(mode=mode, data=merged, origin=origin)


def _merge(base: object, override: object, loc: Location, source: Location, origin: dict[Location, Location]) -> object:
    if not (isinstance(base, dict) and isinstance(override, dict)):
        origin[loc] = source
        return override
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(base.get(key), value, (*loc, key), (*source, key), origin)
    return merged
