"""Loading scenario files: YAML -> pydantic shape -> checkability rules, every problem collected."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pydantic

from harness.scenario.model import MODEL_MODES, Scenario
from harness.scenario.per_mode import ModeView, view_in_mode
from harness.scenario.problems import Location, ScenarioProblem, ScenarioValidationError, dotted_key
from harness.scenario.rules import CONTRACT_RULES, FILE_RULES, check_rules
from harness.scenario.yaml_document import YamlDocument, YamlDocumentError, read_yaml_document

# Why a scenario does not run in a mode it leaves out, when neither its file nor the contract says.
UNSTATED_REASON = "not in model_modes (the file gives no reason)"
MAX_SCENARIO_BYTES = 256 * 1024  # scenarios are a screenful; anything larger is a wrong file
SCENARIO_SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LoadedScenario:
    scenario: Scenario  # as the file says it, per_mode overrides unmerged
    path: Path
    name_line: int  # where `name:` is, to point at duplicates
    modes: Mapping[str, Scenario]  # each listed mode -> the scenario as it runs there (overrides merged)
    not_applicable: Mapping[str, str]  # each other mode -> why the scenario does not run in it

    def in_mode(self, mode: str) -> Scenario:
        """The scenario as it runs in ``mode``: model_modes is [mode], its per_mode override merged in."""
        try:
            return self.modes[mode]
        except KeyError:
            raise ValueError(
                f"scenario {self.scenario.name} does not run in mode {mode}: "
                f"{self.not_applicable.get(mode, 'not a mode')}"
            ) from None


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
        for rule in check_rules(scenario, FILE_RULES)
    )
    modes, mode_problems = _scenario_in_each_mode(document, scenario)
    problems.extend(ScenarioProblem(path=path, **found) for found in mode_problems)
    if problems:
        raise ScenarioValidationError(sorted(problems, key=lambda problem: problem.line or 0))
    return LoadedScenario(
        scenario=scenario,
        path=path,
        name_line=document.line_of(("name",)),
        modes=modes,
        not_applicable=_not_applicable(scenario, document.data),
    )


def _scenario_in_each_mode(
    document: YamlDocument, scenario: Scenario
) -> tuple[dict[str, Scenario], list[dict[str, typing.Any]]]:
    """Each listed mode's scenario, and every problem of any of them (``ScenarioProblem`` fields but the
    path). A problem some modes have and others not says which modes."""
    data = typing.cast(dict[str, object], document.data)
    modes: dict[str, Scenario] = {}
    found: dict[tuple[int, str, str], list[str]] = {}  # (line, key, message) -> the modes with it
    listed = list(dict.fromkeys(scenario.model_modes))
    for mode in listed:
        view = view_in_mode(data, mode)
        try:
            in_mode = Scenario.model_validate(view.data)
        except pydantic.ValidationError as error:
            for detail in error.errors():
                problem = _shape_problem(Path(), document, detail, view)
                found.setdefault((problem.line or 0, problem.key, problem.message), []).append(mode)
            continue
        modes[mode] = in_mode
        for rule in check_rules(in_mode):
            loc = view.source_loc(rule.loc)
            found.setdefault((document.line_of(loc), dotted_key(loc), rule.message), []).append(mode)
    problems = []
    for (line, key, message), with_it in found.items():
        # Said only where the message does not name the modes itself (the contract's "... mode mha" does).
        named = all(f"mode {mode}" in message for mode in with_it)
        where = (
            f"in mode{'s' if len(with_it) > 1 else ''} {', '.join(with_it)}: "
            if len(with_it) < len(listed) and not named
            else ""
        )
        problems.append({"line": line, "key": key, "message": where + message})
    return modes, problems


def _not_applicable(scenario: Scenario, data: object) -> dict[str, str]:
    """Why the scenario does not run in each mode it does not list: what it says, else what the engine or
    the injector would refuse there, else that it is not listed."""
    reasons: dict[str, str] = {}
    for mode in MODEL_MODES:
        if mode in scenario.model_modes:
            continue
        declared = scenario.not_applicable.get(mode)
        if declared is not None:
            reasons[mode] = declared
            continue
        refused = _contract_refusals(typing.cast(dict[str, object], data), mode)
        reasons[mode] = "; ".join(refused) if refused else UNSTATED_REASON
    return reasons


def _contract_refusals(data: dict[str, object], mode: str) -> list[str]:
    view: ModeView = view_in_mode(data, mode)
    try:
        in_mode = Scenario.model_validate(view.data)
    except pydantic.ValidationError:
        return []
    return list(dict.fromkeys(problem.message for problem in check_rules(in_mode, CONTRACT_RULES)))


def _single(path: Path, line: int | None, key: str, message: str) -> ScenarioValidationError:
    return ScenarioValidationError([ScenarioProblem(path=path, line=line, key=key, message=message)])


def _shape_problem(
    path: Path, document: YamlDocument, detail: typing.Any, view: ModeView | None = None
) -> ScenarioProblem:
    """A pydantic error as a located problem; ``view``: the error is in a mode's merged scenario."""
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
    where = view.source_loc(loc) if view is not None else loc
    return ScenarioProblem(path=path, line=document.line_of(where), key=dotted_key(where), message=message)


def _allowed_keys(loc: Location) -> list[str]:
    """The field names of the model at ``loc``, to suggest the right spelling of an unknown key."""
    annotation: object = Scenario
    for part in loc:
        annotation = _inner(annotation, part)
    model = _model_inside(annotation)
    return list(model.model_fields) if model is not None else []


def _inner(annotation: object, part: str | int) -> object:
    """The annotation of what ``part`` (a field, a dict key, a list index) reaches inside ``annotation``."""
    model = _model_inside(annotation)
    if isinstance(part, str) and model is not None and part in model.model_fields:
        return model.model_fields[part].annotation
    container = list if isinstance(part, int) else dict
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is container:
            return typing.get_args(candidate)[-1]
    return None


def _model_inside(annotation: object) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, dict):
        return None  # a container's items are not the container
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
