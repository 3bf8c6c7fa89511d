"""Parsing of the /generate and /generate-batch bodies into typed requests.

The API layer decodes the JSON and hands over whatever it got; everything else happens here, and
every problem is a `BadRequest` (or `ModelNotSupported`) whose message names the field and the
rule. Keys of a body are either *service fields* or *model parameters*:

    /generate         model_name, output_filename, external_semaphore_id, credentials
                      + the model's parameters (prompt included), checked by its input model
    /generate-batch   model_name, tasks | prompts (+ custom_filenames), external_semaphore_id,
                      credentials + model parameters, which are defaults for every task
    a batch task      prompt, output_filename + model parameters (a task's value wins)

Decisions where the seed is silent:

- `model_name` is required ("model_name is required"): every seed example gives it, and a
  silent default would hide a typo'd key.
- An absent, null, empty or whitespace-only prompt is "missing": the seed's
  `Task 0 missing required field: prompt` in a batch (first offender), and
  `Missing required field: prompt` on /generate.
- `external_semaphore_id` and `output_filename` may be null or "" to mean "none", as clients of
  the seed template them that way.
- `credentials` must be an object whose only key is `replicate_api_token`; a null or absent token
  means "no user credentials" (authentication then decides). The token is kept as a SecretStr,
  left out of reprs, and never appears in an error message.
- Legacy `custom_filenames` must have exactly as many entries as `prompts` (null entries allowed).
- Model-parameter problems are collected over the whole body (every task) into one BadRequest,
  with the structured list in `fields["details"]` ([{field, rule}]). A problem in a top-level
  default is reported once, under its top-level name.
- Values are echoed only when short (numbers, booleans, strings up to 32 characters).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr, ValidationError

from service.config import SEMAPHORE_ID_PATTERN
from service.errors import BadRequest, ModelNotSupported
from service.filenames import validate_output_filename
from service.schemas.models import MODELS, SUPPORTED_MODELS, ModelSpec

MAX_TOKEN_CHARS = 512
MAX_LISTED_PROBLEMS = 10
MAX_DETAILS = 50

_SEMAPHORE_ID_RE = re.compile(SEMAPHORE_ID_PATTERN)
_TOKEN_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN_CHARS}}}")

_SHARED_KEYS = frozenset({"model_name", "external_semaphore_id", "credentials"})
GENERATE_SERVICE_KEYS = _SHARED_KEYS | {"output_filename"}
BATCH_SERVICE_KEYS = _SHARED_KEYS | {"tasks", "prompts", "custom_filenames"}
TASK_SERVICE_KEYS = frozenset({"output_filename"})

# Maps a top-level parameter name to the name shown to the caller: "guidance" → "tasks[2].guidance".
_FieldNamer = Callable[[str], str]


@dataclass(frozen=True)
class GenerateRequest:
    """A validated /generate body. `replicate_input` is exactly what Replicate receives."""

    model_name: str
    spec: ModelSpec
    replicate_input: dict[str, Any]
    prompt: str
    output_filename: str | None
    external_semaphore_id: str | None
    replicate_api_token: SecretStr | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TaskRequest:
    """One task of a batch, at position `index` of the caller's list."""

    index: int
    prompt: str
    output_filename: str | None
    replicate_input: dict[str, Any]


@dataclass(frozen=True)
class BatchRequest:
    """A validated /generate-batch body; `legacy` is True for the `prompts` form."""

    model_name: str
    spec: ModelSpec
    tasks: list[TaskRequest]
    external_semaphore_id: str | None
    replicate_api_token: SecretStr | None = field(default=None, repr=False)
    legacy: bool = False


@dataclass(frozen=True)
class _Problem:
    field: str
    rule: str
    message: str


def parse_generate(
    body: object, *, supported: Collection[str] = SUPPORTED_MODELS
) -> GenerateRequest:
    """Validate a decoded /generate body; raises BadRequest / ModelNotSupported."""
    data = _require_object(body)
    spec = _resolve_model(data, supported)
    semaphore_id = _semaphore_id(data)
    token = _token(data)
    output_filename = _output_filename(data.get("output_filename"), "output_filename")
    if _is_blank(data.get("prompt")):
        raise BadRequest("Missing required field: prompt")

    params = {k: v for k, v in data.items() if k not in GENERATE_SERVICE_KEYS}
    try:
        model = spec.input_model.model_validate(params)
    except ValidationError as exc:
        problems = _problems_from(exc, spec, lambda key: key)
        raise _bad_request(problems) from None
    return GenerateRequest(
        model_name=spec.name,
        spec=spec,
        replicate_input=model.to_replicate_input(),
        prompt=model.prompt,
        output_filename=output_filename,
        external_semaphore_id=semaphore_id,
        replicate_api_token=token,
    )


def parse_batch(
    body: object, *, max_tasks: int, supported: Collection[str] = SUPPORTED_MODELS
) -> BatchRequest:
    """Validate a decoded /generate-batch body (tasks form or legacy prompts form)."""
    data = _require_object(body)
    spec = _resolve_model(data, supported)
    semaphore_id = _semaphore_id(data)
    token = _token(data)

    has_tasks = data.get("tasks") is not None
    has_prompts = data.get("prompts") is not None
    if has_tasks and has_prompts:
        raise BadRequest("Give either 'tasks' or the legacy 'prompts', not both")
    if not has_tasks and not has_prompts:
        raise BadRequest(
            "Missing required field: tasks (a list of task objects; or the legacy 'prompts', "
            "a list of strings)"
        )
    if has_tasks and data.get("custom_filenames") is not None:
        raise BadRequest(
            "'custom_filenames' belongs to the legacy 'prompts' form; with 'tasks', give each "
            "task an output_filename"
        )

    problems: list[_Problem] = []
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        if key in BATCH_SERVICE_KEYS:
            continue
        if key in ("prompt", "output_filename"):
            where = "each task" if has_tasks else "'prompts' / 'custom_filenames'"
            rule = f"belongs in {where}, not at the top level of a batch"
            problems.append(_Problem(key, rule, f"Invalid field '{key}': {rule}"))
        else:
            defaults[key] = value

    if has_tasks:
        tasks = _parse_tasks(data["tasks"], defaults, spec, max_tasks, problems)
    else:
        tasks = _parse_legacy(data, defaults, spec, max_tasks, problems)
    if problems:
        raise _bad_request(problems)
    return BatchRequest(
        model_name=spec.name,
        spec=spec,
        tasks=tasks,
        external_semaphore_id=semaphore_id,
        replicate_api_token=token,
        legacy=not has_tasks,
    )


def _parse_tasks(
    items: object,
    defaults: dict[str, Any],
    spec: ModelSpec,
    max_tasks: int,
    problems: list[_Problem],
) -> list[TaskRequest]:
    task_list = _require_list(items, "tasks", "a list of task objects", max_tasks)
    for index, task in enumerate(task_list):
        if not isinstance(task, dict):
            raise BadRequest(f"Invalid field 'tasks[{index}]': must be an object")
        if _is_blank(task.get("prompt")):
            raise BadRequest(f"Task {index} missing required field: prompt")

    results: list[TaskRequest] = []
    for index, task in enumerate(task_list):
        prefix = f"tasks[{index}]"
        output_filename = _output_filename(task.get("output_filename"), f"{prefix}.output_filename")
        own: dict[str, Any] = {}
        for key, value in task.items():
            if key in TASK_SERVICE_KEYS:
                continue
            if key in BATCH_SERVICE_KEYS:
                rule = "set once at the top level of the batch, not per task"
                name = f"{prefix}.{key}"
                problems.append(_Problem(name, rule, f"Invalid field '{name}': {rule}"))
                continue
            own[key] = value

        def where(key: str, own: dict[str, Any] = own, prefix: str = prefix) -> str:
            return f"{prefix}.{key}" if key in own else key

        task_request = _validate_task(
            index, {**defaults, **own}, output_filename, spec, where, problems
        )
        if task_request is not None:
            results.append(task_request)
    return results


def _parse_legacy(
    data: dict[str, Any],
    defaults: dict[str, Any],
    spec: ModelSpec,
    max_tasks: int,
    problems: list[_Problem],
) -> list[TaskRequest]:
    prompts = _require_list(data["prompts"], "prompts", "a list of strings", max_tasks)
    for index, prompt in enumerate(prompts):
        if _is_blank(prompt):
            raise BadRequest(f"Task {index} missing required field: prompt")
        if not isinstance(prompt, str):
            raise BadRequest(f"Invalid field 'prompts[{index}]': must be a string")

    raw_names = data.get("custom_filenames")
    names: list[str | None]
    if raw_names is None:
        names = [None] * len(prompts)
    else:
        if not isinstance(raw_names, list):
            raise BadRequest("Invalid field 'custom_filenames': must be a list of strings")
        if len(raw_names) != len(prompts):
            raise BadRequest(
                f"Invalid field 'custom_filenames': has {len(raw_names)} entries but 'prompts' "
                f"has {len(prompts)}; they must have the same length"
            )
        names = [
            _output_filename(name, f"custom_filenames[{index}]")
            for index, name in enumerate(raw_names)
        ]

    results: list[TaskRequest] = []
    for index, (prompt, name) in enumerate(zip(prompts, names, strict=True)):

        def where(key: str, index: int = index) -> str:
            return f"prompts[{index}]" if key == "prompt" else key

        task_request = _validate_task(
            index, {**defaults, "prompt": prompt}, name, spec, where, problems
        )
        if task_request is not None:
            results.append(task_request)
    return results


def _validate_task(
    index: int,
    params: dict[str, Any],
    output_filename: str | None,
    spec: ModelSpec,
    where: _FieldNamer,
    problems: list[_Problem],
) -> TaskRequest | None:
    try:
        model = spec.input_model.model_validate(params)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, spec, where))
        return None
    return TaskRequest(
        index=index,
        prompt=model.prompt,
        output_filename=output_filename,
        replicate_input=model.to_replicate_input(),
    )


# --- service fields ------------------------------------------------------------------------


def _require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"Request body must be a JSON object, got {json_type(body)}")
    return body


def _require_list(value: object, name: str, what: str, max_tasks: int) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"Invalid field '{name}': must be {what}, got {json_type(value)}")
    if not value:
        raise BadRequest(f"Invalid field '{name}': must not be empty")
    if len(value) > max_tasks:
        raise BadRequest(
            f"Batch has {len(value)} tasks; the limit is MAX_BATCH_TASKS={max_tasks}",
            fields={"max_batch_tasks": max_tasks},
        )
    return value


def _resolve_model(data: Mapping[str, Any], supported: Collection[str]) -> ModelSpec:
    available = [name for name in supported if name in MODELS]
    name = data.get("model_name")
    if name is None:
        raise BadRequest("model_name is required", fields={"supported_models": available})
    if not isinstance(name, str):
        raise BadRequest(
            f"Invalid field 'model_name': must be a string, one of {', '.join(available)}",
            fields={"supported_models": available},
        )
    if name not in available:
        raise ModelNotSupported(_short(name, 100), available)
    return MODELS[name]


def _semaphore_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("external_semaphore_id")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _SEMAPHORE_ID_RE.fullmatch(value):
        raise BadRequest(
            "Invalid field 'external_semaphore_id': must be 1-128 characters of letters, "
            "digits, '.', '_', ':' or '-', starting with a letter or digit "
            f"(pattern {SEMAPHORE_ID_PATTERN})"
        )
    return value


def _token(data: Mapping[str, Any]) -> SecretStr | None:
    credentials = data.get("credentials")
    if credentials is None:
        return None
    if not isinstance(credentials, dict):
        raise BadRequest(
            "Invalid field 'credentials': must be an object like "
            '{"replicate_api_token": "r8_..."}'
        )
    for key in credentials:
        if key != "replicate_api_token":
            raise BadRequest(
                f"Unknown field 'credentials.{_short(str(key), 64)}' "
                "(credentials takes only replicate_api_token)"
            )
    token = credentials.get("replicate_api_token")
    if token is None:
        return None
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        # Never echo the value: it is (meant to be) a secret.
        raise BadRequest(
            "Invalid field 'credentials.replicate_api_token': must be a non-empty string of at "
            f"most {MAX_TOKEN_CHARS} printable characters without spaces"
        )
    return SecretStr(token)


def _output_filename(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    return validate_output_filename(value, field=name)


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# --- turning pydantic errors into one message ------------------------------------------------


def _problems_from(exc: ValidationError, spec: ModelSpec, where: _FieldNamer) -> list[_Problem]:
    problems: list[_Problem] = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        head = _short(str(loc[0]), 64) if loc else ""
        name = where(head) if loc else "input"
        for part in loc[1:]:
            name += f"[{part}]" if isinstance(part, int) else f".{_short(str(part), 64)}"
        kind = error["type"]
        if kind == "extra_forbidden":
            rule = f"not a parameter of {spec.name}"
            hint = _suggest(head, spec)
            message = f"Unknown parameter '{name}' ({rule}{hint})"
        elif kind == "missing":
            rule = "required"
            message = f"Missing required field: {name}"
        else:
            rule = error["msg"]
            message = f"Invalid parameter '{name}': {rule}{_got(error.get('input'))}"
        problems.append(_Problem(name, rule, message))
    return problems


def _bad_request(problems: Iterable[_Problem]) -> BadRequest:
    unique = list(dict.fromkeys(problems))  # one report per (field, rule), first seen first
    listed = [p.message for p in unique[:MAX_LISTED_PROBLEMS]]
    more = len(unique) - len(listed)
    if more:
        listed.append(f"and {more} more problem{'s' if more > 1 else ''}")
    details = [{"field": p.field, "rule": p.rule} for p in unique[:MAX_DETAILS]]
    return BadRequest("; ".join(listed), fields={"details": details})


def _suggest(key: str, spec: ModelSpec) -> str:
    matches = difflib.get_close_matches(key, sorted(spec.parameter_names), n=1, cutoff=0.75)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _got(value: object) -> str:
    if value is None or isinstance(value, bool | int | float):
        text = json.dumps(value) if value is None or isinstance(value, bool) else repr(value)
        return f" (got {_short(text, 40)})"
    if isinstance(value, str):
        if len(value) <= 32:
            return f" (got {json.dumps(value)})"
        return f" (got a string of {len(value)} characters)"
    return f" (got {json_type(value)})"


def json_type(value: object) -> str:
    """How a JSON value is named in error messages: "a string", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
