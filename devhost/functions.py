"""Read each function's own decorator metadata (``app.get_functions()``) into typed trigger specs.

There is no second registry: the routes, schedules and queue names come from the bindings the azure-functions
decorators recorded, exactly what the real host indexes (``get_bindings_dict()``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func

from devhost.config import DevHostError

HTTP_TRIGGER = "httpTrigger"
TIMER_TRIGGER = "timerTrigger"
QUEUE_TRIGGER = "queueTrigger"
SUPPORTED_TRIGGERS = {HTTP_TRIGGER, TIMER_TRIGGER, QUEUE_TRIGGER}


def _plain(value: Any) -> Any:
    """Enum members (BindingDirection, HttpMethod, AuthLevel) → their values, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    enum_value = getattr(value, "value", None)
    if enum_value is not None and type(value).__module__.startswith("azure.functions"):
        return enum_value
    return value


@dataclass
class FunctionSpec:
    """One function of the app as devhost runs it."""

    name: str
    trigger_type: str
    trigger: dict[str, Any]  # the trigger binding, enums flattened to plain values
    user_function: Callable[..., Any]
    is_async: bool
    trigger_arg: str
    wants_context: bool
    retry: dict[str, Any] | None = None
    bindings: list[dict[str, Any]] = field(default_factory=list)
    trigger_annotation: str = ""  # "str" / "bytes" when the handler asks for the body itself (queue triggers)


def load_app(spec: str) -> func.FunctionApp:
    """Import ``module:attr`` (default attr ``app``) with the current directory importable.

    Raises:
        DevHostError: bad spec, import failure (the cause is chained), missing attribute or not a FunctionApp.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")) or not attr.isidentifier():
        raise DevHostError(f"--app must look like 'module:attr' (e.g. function_app:app), got {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise DevHostError(f"cannot import app module '{module_name}' (not found from {cwd})") from exc
        raise DevHostError(f"importing '{module_name}' failed: {exc}") from exc
    except Exception as exc:
        raise DevHostError(f"importing '{module_name}' failed: {type(exc).__name__}: {exc}") from exc
    try:
        app = getattr(module, attr)
    except AttributeError as exc:
        raise DevHostError(f"module '{module_name}' has no attribute '{attr}'") from exc
    if not isinstance(app, func.FunctionApp):
        raise DevHostError(f"'{spec}' is a {type(app).__name__}, not an azure.functions.FunctionApp")
    return app


def collect_functions(app: func.FunctionApp) -> list[FunctionSpec]:
    """Turn ``app.get_functions()`` into specs, refusing what devhost cannot run faithfully.

    Raises:
        DevHostError: unsupported trigger or binding, or a handler whose parameters do not match its bindings.
    """
    # azure-functions 1.26 remembers names across get_functions() calls and raises "does not have a unique
    # function name" on a second call (FunctionApp.validate_function_names); duplicates inside one call are still
    # caught, so start from a clean slate.
    if getattr(app, "functions_bindings", None):
        app.functions_bindings = None
    try:
        functions = app.get_functions()
    except ValueError as exc:
        raise DevHostError(f"the app's functions cannot be indexed: {exc}") from exc
    specs: list[FunctionSpec] = []
    for fn in functions:
        name = str(fn.get_function_name())
        bindings = [_plain(b) for b in fn.get_bindings_dict()["bindings"]]
        triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1:
            raise DevHostError(f"function '{name}': expected exactly one trigger binding, found {len(triggers)}")
        trigger = triggers[0]
        ttype = trigger["type"]
        if ttype not in SUPPORTED_TRIGGERS:
            raise DevHostError(
                f"function '{name}': trigger type '{ttype}' is not supported by devhost "
                f"(supported: {', '.join(sorted(SUPPORTED_TRIGGERS))})"
            )
        for b in bindings:
            if b is trigger:
                continue
            if ttype == HTTP_TRIGGER and b.get("type") == "http" and b.get("name") == "$return":
                continue
            raise DevHostError(
                f"function '{name}': binding '{b.get('name')}' of type '{b.get('type')}' "
                f"({b.get('direction')}) is not supported by devhost; use the SDK clients directly"
            )
        user_fn = fn.get_user_function()
        params = inspect.signature(user_fn).parameters
        arg = trigger["name"]
        if arg not in params:
            raise DevHostError(f"function '{name}': the handler has no parameter '{arg}' for its trigger")
        extra = [p for p in params if p not in (arg, "context")]
        required_extra = [p for p in extra if params[p].default is inspect.Parameter.empty]
        if required_extra:
            raise DevHostError(f"function '{name}': parameters {required_extra} are not bound to any binding")
        retry = fn.get_settings_dict("retry_policy")
        annotation = _annotation_name(params[arg].annotation)
        specs.append(
            FunctionSpec(
                name=name,
                trigger_type=ttype,
                trigger=trigger,
                user_function=user_fn,
                is_async=inspect.iscoroutinefunction(user_fn),
                trigger_arg=arg,
                wants_context="context" in params,
                retry=dict(retry) if retry else None,
                bindings=bindings,
                trigger_annotation=annotation,
            )
        )
    return specs


def _annotation_name(annotation: Any) -> str:
    """``str``/``bytes`` annotations (real or postponed strings) → their name; anything else → ``""``."""
    if annotation in (str, bytes):
        return str(annotation.__name__)
    if isinstance(annotation, str) and annotation.strip() in ("str", "bytes"):
        return annotation.strip()
    return ""


def method_list(trigger: Mapping[str, Any]) -> list[str] | None:
    """Upper-case HTTP methods of an httpTrigger, None meaning "all methods"."""
    methods = trigger.get("methods")
    if not methods:
        return None
    return sorted({str(m).upper() for m in methods})
