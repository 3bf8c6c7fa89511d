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

Cost (a body is parsed before authentication can refuse it, so an anonymous caller controls it):
rejecting a body costs a bounded amount per key, whatever it holds.

- Unknown parameters are found by set difference against the model's parameter names before
  pydantic sees the rest, so pydantic never builds one error per unknown key, and a batch's
  unknown top-level keys are reported once instead of once per task.
- Only the problems that can be shown are built: the first MAX_DETAILS in full, the rest only
  counted; "did you mean" (difflib, the costly part) is asked only for the MAX_LISTED_PROBLEMS
  messages that are listed.
- A batch's known top-level parameters are still merged into each task and validated with it:
  kontext's rules (match_input_image, safety_tolerance with an input_image) depend on the task's
  own fields. That is at most one value per model parameter per task.
- `parse_batch_async` validates task by task and lets the event loop run between tasks
  (service.schemas.cooperative): a batch of MAX_BATCH_TASKS large tasks takes a while, but
  never holds the loop for long.
- `request_token` reads only the credentials, so a route can authenticate before validating
  the model input.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr, ValidationError

from service.config import SEMAPHORE_ID_PATTERN
from service.errors import BadRequest, ModelNotSupported
from service.filenames import validate_output_filename
from service.schemas.cooperative import Steps, finish, finish_async
from service.schemas.models import MODELS, SUPPORTED_MODELS, ModelInput, ModelSpec

MAX_TOKEN_CHARS = 512
MAX_LISTED_PROBLEMS = 10
MAX_DETAILS = 50
# "did you mean" is only useful in the listed messages, and difflib is the costly part.
MAX_SUGGESTIONS = MAX_LISTED_PROBLEMS

_SEMAPHORE_ID_RE = re.compile(SEMAPHORE_ID_PATTERN)
# A user-tier token: printable ASCII, no spaces (documented as this pattern in OpenAPI).
TOKEN_PATTERN = rf"^[\x21-\x7e]{{1,{MAX_TOKEN_CHARS}}}$"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

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


def request_token(body: object) -> SecretStr | None:
    """The user-tier token of a /generate or /generate-batch body (checked for form only).

    Read before anything else is validated, so that the route can authenticate first and an
    anonymous caller's body is never validated in depth.
    """
    return _token(_require_object(body))


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
    problems = _Problems(spec)
    known, unknown = _split_known(params, spec)
    model = _validate(spec, known, lambda key: key, problems)
    problems.add_unknown(unknown)
    if problems or model is None:
        raise problems.error()
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
    return finish(_batch_steps(body, max_tasks, supported))


async def parse_batch_async(
    body: object, *, max_tasks: int, supported: Collection[str] = SUPPORTED_MODELS
) -> BatchRequest:
    """`parse_batch`, letting the event loop run between tasks (for the route)."""
    return await finish_async(_batch_steps(body, max_tasks, supported))


def _batch_steps(body: object, max_tasks: int, supported: Collection[str]) -> Steps[BatchRequest]:
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

    problems = _Problems(spec)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        if key in BATCH_SERVICE_KEYS:
            continue
        if key in ("prompt", "output_filename"):
            where = "each task" if has_tasks else "'prompts' / 'custom_filenames'"
            rule = f"belongs in {where}, not at the top level of a batch"
            problems.add(_Problem(key, rule, f"Invalid field '{key}': {rule}"))
        else:
            defaults[key] = value
    known_defaults, unknown_defaults = _split_known(defaults, spec)
    yield

    if has_tasks:
        tasks = yield from _parse_tasks(
            data["tasks"], known_defaults, unknown_defaults, spec, max_tasks, problems
        )
    else:
        tasks = yield from _parse_legacy(
            data, known_defaults, unknown_defaults, spec, max_tasks, problems
        )
    if problems:
        raise problems.error()
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
    unknown_defaults: list[str],
    spec: ModelSpec,
    max_tasks: int,
    problems: _Problems,
) -> Steps[list[TaskRequest]]:
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
                problems.add(_Problem(name, rule, f"Invalid field '{name}': {rule}"))
                continue
            own[key] = value
        own_known, own_unknown = _split_known(own, spec)

        def where(key: str, own: dict[str, Any] = own, prefix: str = prefix) -> str:
            return f"{prefix}.{key}" if key in own else key

        model = _validate(spec, {**defaults, **own_known}, where, problems)
        if index == 0:  # the top-level unknowns once, where the first task would report them
            problems.add_unknown(unknown_defaults)
        problems.add_unknown(own_unknown, prefix)
        if model is not None:
            results.append(_task(index, model, output_filename))
        yield
    return results


def _parse_legacy(
    data: dict[str, Any],
    defaults: dict[str, Any],
    unknown_defaults: list[str],
    spec: ModelSpec,
    max_tasks: int,
    problems: _Problems,
) -> Steps[list[TaskRequest]]:
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

        model = _validate(spec, {**defaults, "prompt": prompt}, where, problems)
        if index == 0:
            problems.add_unknown(unknown_defaults)
        if model is not None:
            results.append(_task(index, model, name))
        yield
    return results


def _split_known(params: dict[str, Any], spec: ModelSpec) -> tuple[dict[str, Any], list[str]]:
    """The model's parameters, and the other keys (in body order)."""
    names = spec.parameter_names
    known = {k: v for k, v in params.items() if k in names}
    unknown = [k for k in params if k not in names] if len(known) < len(params) else []
    return known, unknown


def _validate(
    spec: ModelSpec, params: dict[str, Any], where: _FieldNamer, problems: _Problems
) -> ModelInput | None:
    """Validate model parameters (known keys only); problems go to `problems`."""
    try:
        return spec.input_model.model_validate(params)
    except ValidationError as exc:
        problems.add_validation_errors(exc, where)
        return None


def _task(index: int, model: ModelInput, output_filename: str | None) -> TaskRequest:
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


# --- turning problems into one message --------------------------------------------------------


class _Problems:
    """The problems of one body, in the order found, each (field, rule, message) once.

    Only what can be shown is built: the first MAX_DETAILS problems are kept, later ones only
    counted; a suggestion is computed only for a message that will be listed.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._kept: list[_Problem] = []
        self._seen: set[_Problem] = set()
        self._not_kept = 0
        self._suggestions_left = MAX_SUGGESTIONS

    def __bool__(self) -> bool:
        return bool(self._kept)

    def add(self, problem: _Problem) -> None:
        if problem in self._seen:
            return
        self._seen.add(problem)
        if len(self._kept) < MAX_DETAILS:
            self._kept.append(problem)
        else:
            self._not_kept += 1

    def add_unknown(self, keys: list[str], prefix: str = "") -> None:
        """Unknown parameters of one object (`prefix` names it: "tasks[2]", "" for the top
        level). Each is reported once by construction, so those past MAX_DETAILS are counted
        without being built."""
        for position, key in enumerate(keys):
            if len(self._kept) >= MAX_DETAILS:
                self._not_kept += len(keys) - position
                return
            short = _short(key, 64)
            self.add(self._unknown(f"{prefix}.{short}" if prefix else short, short))

    def add_validation_errors(self, exc: ValidationError, where: _FieldNamer) -> None:
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            head = _short(str(loc[0]), 64) if loc else ""
            name = where(head) if loc else "input"
            for part in loc[1:]:
                name += f"[{part}]" if isinstance(part, int) else f".{_short(str(part), 64)}"
            kind = error["type"]
            if kind == "extra_forbidden":  # not reached (unknown keys never reach pydantic)
                self.add(self._unknown(name, head))
                continue
            if kind == "missing":
                rule = "required"
                message = f"Missing required field: {name}"
            else:
                rule = error["msg"]
                message = f"Invalid parameter '{name}': {rule}{_got(error.get('input'))}"
            self.add(_Problem(name, rule, message))

    def _unknown(self, name: str, key: str) -> _Problem:
        rule = f"not a parameter of {self._spec.name}"
        hint = ""
        if len(self._kept) < MAX_LISTED_PROBLEMS and self._suggestions_left > 0:
            self._suggestions_left -= 1
            hint = _suggest(key, self._spec)
        return _Problem(name, rule, f"Unknown parameter '{name}' ({rule}{hint})")

    def error(self) -> BadRequest:
        listed = [p.message for p in self._kept[:MAX_LISTED_PROBLEMS]]
        more = len(self._kept) + self._not_kept - len(listed)
        if more:
            listed.append(f"and {more} more problem{'s' if more > 1 else ''}")
        details = [{"field": p.field, "rule": p.rule} for p in self._kept]
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
