"""MMSA's four functions that registration extends, and the one mechanism that does it.

``MMSA_run``, ``MMSA_test``, ``get_config_regression`` and ``get_config_tune`` must behave as ours
for our keys wherever a user holds them: ``from MMSA import MMSA_run`` binds the *function
object*, and MMSA binds each of them in two or three modules (``MMSA``, ``MMSA.run``,
``MMSA.config``).  Replacing the names would miss a function bound before ``import khar_mmsa``
(``from MMSA import MMSA_run, MMSA_test`` first, then ``import khar_mmsa``), and a post-import hook
alone cannot help there: MMSA was imported, and the name bound, before khar_mmsa ran.  So
:func:`route_entry_points` changes the function objects themselves, in one way for all four: each
one's ``__code__`` becomes the code of an ordinary function below (``body_of_MMSA_run``, ...),
compiled with this module like any other (no ``exec``).  MMSA's function keeps its name, defaults,
annotations and docstring (so ``help(MMSA_run)`` is MMSA's); whatever the import order, every
binding of it runs our route, and a copy of MMSA's own function (made at registration) runs MMSA's
body for everything that is not ours.  :func:`~.replacements.restore_all` puts MMSA's code back.

Rules of the four bodies (checked by :func:`route_entry_points` and tests/test_mmsa_package.py):
they run with *MMSA's* module globals, so they read no global name -- each imports :func:`route`
inside itself -- and they have no closure (``__code__`` must keep the free-variable layout of
MMSA's function, which has none); their parameters are MMSA 2.2.1's, in MMSA's order.

Because Python fills in MMSA's defaults before a body runs, :func:`route` tells what the caller
gave by identity: an argument that *is* MMSA's default object was left out.  (MMSA's list and path
defaults are objects no caller passes; for its ``num_workers=4``, ``gpu_id=0`` and ``None``
defaults, passing the default value counts as leaving it out, which our runner and ``MMSA_test``
read as MMSA's default again -- except ``num_workers``, which is then 0 on a machine without CUDA.)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Tuple

from khar_mmsa.registration.extra_models import is_extra_model
from khar_mmsa.registration.replacements import mmsa_module, replace


# -- the bodies: each runs as MMSA's function's code, with MMSA's globals (read none) ---------------
def body_of_MMSA_run(model_name, dataset_name, config_file, config, seeds, is_tune, tune_times,  # noqa: N802
                     custom_feature, feature_T, feature_A, feature_V, gpu_ids, num_workers, verbose_level,
                     model_save_dir, res_save_dir, log_dir):
    """``MMSA_run``'s body once registered: :func:`route` decides."""
    from khar_mmsa.registration.entry_points import route
    return route("MMSA_run", model_name, dataset_name, config_file, config, seeds, is_tune, tune_times,
                 custom_feature, feature_T, feature_A, feature_V, gpu_ids, num_workers, verbose_level,
                 model_save_dir, res_save_dir, log_dir)


def body_of_MMSA_test(config, weights_path, feature_path, gpu_id):  # noqa: N802
    """``MMSA_test``'s body once registered: :func:`route` decides."""
    from khar_mmsa.registration.entry_points import route
    return route("MMSA_test", config, weights_path, feature_path, gpu_id)


def body_of_get_config_regression(model_name, dataset_name, config_file):
    """``get_config_regression``'s body once registered: :func:`route` decides."""
    from khar_mmsa.registration.entry_points import route
    return route("get_config_regression", model_name, dataset_name, config_file)


def body_of_get_config_tune(model_name, dataset_name, config_file, random_choice):
    """``get_config_tune``'s body once registered: :func:`route` decides."""
    from khar_mmsa.registration.entry_points import route
    return route("get_config_tune", model_name, dataset_name, config_file, random_choice)


#: The MMSA function each body becomes the code of: ``name -> (module that defines it, body)``.
BODIES: Dict[str, Tuple[str, Callable]] = {
    "MMSA_run": ("MMSA.run", body_of_MMSA_run),
    "MMSA_test": ("MMSA.run", body_of_MMSA_test),
    "get_config_regression": ("MMSA.config", body_of_get_config_regression),
    "get_config_tune": ("MMSA.config", body_of_get_config_tune),
}

#: ``name -> a copy of MMSA's own function`` (MMSA's body, globals and defaults), made at registration.
_MMSA_OWN: Dict[str, Callable] = {}


def _copy_of(function: Callable) -> Callable:
    """A new function object with ``function``'s body, globals, defaults, annotations and name."""
    import types
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__, copy.__annotations__ = function.__kwdefaults__, dict(function.__annotations__)
    copy.__qualname__, copy.__doc__, copy.__module__ = function.__qualname__, function.__doc__, function.__module__
    return copy


def _parameters(code: Any) -> Tuple[str, ...]:
    return tuple(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])


def route_entry_points() -> None:
    """Give each MMSA function of :data:`BODIES` its body here (recorded; see the module's docstring)."""
    for name, (module_name, body) in BODIES.items():
        function = getattr(mmsa_module(module_name), name)
        expected, found = _parameters(function.__code__), _parameters(body.__code__)
        if expected != found or function.__code__.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
            raise TypeError(f"{module_name}.{name}: MMSA 2.2.1's parameters {found} were expected, this MMSA "
                            f"has {expected} (khar-mmsa supports mmsa==2.2.1)")
        _MMSA_OWN[name] = _copy_of(function)
        replace(function, "__code__", body.__code__)


def _given(name: str, arguments: Mapping[str, Any]) -> Dict[str, Any]:
    """The arguments the caller gave: those that are not MMSA's default object (module docstring)."""
    defaults = inspect.signature(_MMSA_OWN[name]).parameters
    return {k: v for k, v in arguments.items() if v is not defaults[k].default}


def route(name: str, *values: Any) -> Any:
    """One call of MMSA's function ``name`` with its arguments in MMSA's order: ours for our keys,
    MMSA's own body (the copy made at registration) for the rest."""
    arguments = dict(zip(inspect.signature(_MMSA_OWN[name]).parameters, values))
    if name == "MMSA_run":
        from khar_mmsa.io.names import check_run_names  # MMSA makes file names of them: first
        check_run_names(arguments["model_name"], arguments["dataset_name"])
        if is_extra_model(arguments["model_name"]):
            from khar_mmsa.runs.runner import run
            return run(**_given(name, arguments))
    elif name == "MMSA_test":
        if is_extra_model(_test_model_name(arguments["config"])):
            from khar_mmsa.prediction.mmsa_test import mmsa_test
            return mmsa_test(**_given(name, arguments))
    else:  # get_config_<kind>: with MMSA's default file, what MMSA's JSON lacks is read from ours
        from khar_mmsa.registration.configs import config_for, is_default_config_file, knows
        kind = name[len("get_config_"):]
        model_name, dataset_name = arguments["model_name"], arguments["dataset_name"]
        if is_default_config_file(arguments["config_file"], kind) and not knows(model_name, dataset_name, kind):
            return config_for(model_name, dataset_name, kind, random_choice=arguments.get("random_choice", True))
    return _MMSA_OWN[name](**arguments)


def _test_model_name(config: Any) -> Any:
    """The model ``MMSA_test``'s ``config`` names: a dict's or a JSON file's ``model_name``, or a key."""
    import json
    from pathlib import Path
    if isinstance(config, Mapping):
        return config.get("model_name")
    if isinstance(config, (str, Path)) and Path(config).is_file():
        try:
            return json.loads(Path(config).read_text(encoding="utf-8")).get("model_name")
        except (ValueError, AttributeError, OSError):
            return None  # MMSA's own MMSA_test reports what is wrong with the file
    return config
