"""Loading scenario files: YAML -> pydantic shape -> checkability rules, every problem collected."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydantic

from harness.scenario.model import Scenario
from harness.scenario.problems import Location, ScenarioProblem, ScenarioValidationError, dotted_key
from harness.scenario.rules import check_rules
from harness.scenario.yaml_document import YamlDocument, YamlDocumentError, read_yaml_document

MAX_SCENARIO_BYTES = 256 * 1024  # scenarios are a screenful; anything larger is a wrong file
SCENARIO_SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LoadedScenario:
    scenario: Scenario
    path: Path
    name_line: int  # where `name:` is, to point at duplicates


def expand_scenario_paths(paths: Iterable[Path]) -> tuple[list[Path], list[ScenarioProblem]]:
    """Files as given, directories as their *.yaml / *.yml (recursively, sorted)."""
    files: list[Path] = []
    problems: list[ScenarioProblem] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SCENARIO_SUFFIXES and p.is_file())
            if not found:
                problems.append(
                    ScenarioProblem(path=path, line=None, key="(directory)", message="holds no *.yaml scenario files")
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            # Never opened: reading a FIFO or a device could block or never end.
            message = "is not a regular file or a directory" if path.exists() else "no such file or directory"
            problems.append(ScenarioProblem(path=path, line=None, key="(file)", message=message))
    return list(dict.fromkeys(files)), problems


def load_scenarios(paths: Iterable[Path]) -> list[LoadedScenario]:
    """Load every scenario under ``paths``; raise one error listing all problems in all files."""
    files, problems = expand_scenario_paths(paths)
    loaded: list[LoadedScenario] = []
    for file in files:
        try:
            loaded.append(load_scenario_file(file))
        except ScenarioValidationError as error:
            problems.extend(error.problems)
    problems.extend(_duplicate_names(loaded))
    if problems:
        raise ScenarioValidationError(problems)
    return loaded


def load_scenario_file(path: Path) -> LoadedScenario:
    try:
        size = path.stat().st_size
        if size > MAX_SCENARIO_BYTES:
            raise _single(
                path,
                None,
                "(file)",
                f"is {size} bytes; scenario files are capped at {MAX_SCENARIO_BYTES} bytes (is this the right file?)",
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _single(path, None, "(file)", f"is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise _single(path, None, "(file)", f"cannot be read: {error.strerror or error}") from None
    return load_scenario_text(text, path)


def load_scenario_text(text: str, path: Path) -> LoadedScenario:
    try:
        document = read_yaml_document(text)
    except YamlDocumentError as error:
        raise _single(path, error.line, "(document)", str(error)) from None
    if document.data is None:
        raise _single(
            path, 1, "(document)", "is empty; a scenario needs name, description, model_modes, workload and expect"
        )
    if not isinstance(document.data, dict):
        raise _single(
            path, 1, "(document)", f"is a YAML {type(document.data).__name__}, not a mapping of scenario keys"
        )
    problems = [
        ScenarioProblem(
            path=path, line=line, key=dotted_key(loc), message="duplicate key; the later value would silently win"
        )
        for loc, line in document.duplicate_keys
    ]
    try:
        scenario = Scenario.model_validate(document.data)
    except pydantic.ValidationError as error:
        problems.extend(_shape_problem(path, document, detail) for detail in error.errors())
        raise ScenarioValidationError(sorted(problems, key=lambda problem: problem.line or 0)) from None
    problems.extend(
        ScenarioProblem(path=path, line=document.line_of(rule.loc), key=dotted_key(rule.loc), message=rule.message)
        for rule in check_rules(scenario)
    )
    if problems:
        raise ScenarioValidationError(sorted(problems, key=lambda problem: problem.line or 0))
    return LoadedScenario(scenario=scenario, path=path, name_line=document.line_of(("name",)))


def _single(path: Path, line: int | None, key: str, message: str) -> ScenarioValidationError:
    return ScenarioValidationError([ScenarioProblem(path=path, line=line, key=key, message=message)])


def _shape_problem(path: Path, document: YamlDocument, detail: typing.Any) -> ScenarioProblem:
    loc: Location = tuple(detail["loc"])
    kind = detail["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key '{loc[-1]}'" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        message = "required key is missing"
    else:
        value = detail.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) or value is None else ""
        message = f"{detail['msg']}{shown}"
    return ScenarioProblem(path=path, line=document.line_of(loc), key=dotted_key(loc), message=message)


def _allowed_keys(loc: Location) -> list[str]:
    """The field names of the model at ``loc``, to suggest the right spelling of an unknown key."""
    model: type[pydantic.BaseModel] | None = Scenario
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        model = _model_inside(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_inside(annotation: object) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        if (found := _model_inside(argument)) is not None:
            return found
    return None


def _duplicate_names(loaded: Sequence[LoadedScenario]) -> list[ScenarioProblem]:
    first_by_name: dict[str, LoadedScenario] = {}
    problems = []
    for item in loaded:
        first = first_by_name.setdefault(item.scenario.name, item)
        if first is not item:
            problems.append(
                ScenarioProblem(
                    path=item.path,
                    line=item.name_line,
                    key="name",
                    message=f"'{item.scenario.name}' is already the name of "
                    f"{first.path}:{first.name_line}; names must be unique",
                )
            )
    return problems
