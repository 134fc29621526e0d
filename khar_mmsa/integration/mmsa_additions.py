"""Registration's first step: what ``import khar_mmsa`` adds to MMSA 2.2.1 (:func:`add_to_mmsa`).

MMSA has no registry; it builds its tables inside functions, at call time.  :func:`add_to_mmsa`
therefore wraps those functions so that they *add* our keys and otherwise do exactly what they did:

* ``AMIO.__init__`` / ``ATIO.__init__``: model key ``'khar'`` (:data:`.extra_models.EXTRA_MODELS`,
  :data:`.extra_models.EXTRA_TRAINERS`, imported on first use);
* ``MMDataset.__init__`` / ``MetricsTop.__init__``: dataset key ``'simsv2'``, loaded and scored by
  MMSA's SIMS code (:data:`.extra_models.EXTRA_DATASETS`);
* ``get_config_regression`` / ``get_config_tune`` (in ``MMSA.config``, ``MMSA.run``, ``MMSA``): with
  MMSA's default config file, a model or dataset MMSA's JSON lacks is read from ours
  (:func:`.configs.config_for`); what MMSA's JSON has is read by MMSA's getter as before;
* ``SUPPORTED_MODELS`` / ``SUPPORTED_DATASETS``: ``'KHaR'`` / ``'SIMSV2'`` appended;
* ``MMSA_run`` / ``MMSA_test`` (in ``MMSA.run`` and ``MMSA``): a call for ``'khar'`` goes to our
  runner (:func:`.runner.run`) / :func:`.mmsa_test.mmsa_test`; every other call goes to MMSA's
  own function, unchanged;
* ``MMSA.data_loader.pickle`` (and ``MMSA.run.pickle``): serves feature files our runner has
  already read with the restricted unpickler and checked (:mod:`.features`); any other file is
  read by ``pickle.load`` as before.

Each replacement goes through :func:`.replacements.replace`, which records the original.

A ``MMSA_run`` bound before khar_mmsa was imported (``from MMSA import MMSA_run`` first, when MMSA was
already imported) is MMSA's own function: called for ``'khar'`` it stops at its first step, the
config lookup, with :class:`ImportOrderError` saying what to do.
"""
from __future__ import annotations

import functools
import inspect
import sys
import types
from typing import Any, Callable, Dict, Mapping

from khar_mmsa.integration.features import FeatureServer
from khar_mmsa.integration.extra_models import EXTRA_DATASETS, EXTRA_MODELS, EXTRA_TRAINERS, is_extra_model
from khar_mmsa.integration.replacements import mmsa_module, replace


class ImportOrderError(RuntimeError):
    """MMSA's own ``MMSA_run`` was called for a khar-mmsa model."""


def add_to_mmsa() -> None:
    """Add khar-mmsa's model, dataset, config entries and entry-point routes to MMSA."""
    _add_models()
    _add_datasets()
    _add_configs()
    _add_entry_points()


# -- models ------------------------------------------------------------------------------------
def _add_models() -> None:
    amio_cls = mmsa_module("MMSA.models.AMIO").AMIO
    atio_cls = mmsa_module("MMSA.trains.ATIO").ATIO
    replace(amio_cls, "__init__", _amio_init(amio_cls.__init__))
    replace(atio_cls, "__init__", _atio_init(atio_cls.__init__))
    mmsa, run = mmsa_module("MMSA"), mmsa_module("MMSA.run")
    models = list(run.SUPPORTED_MODELS) + ["KHaR"]
    datasets = list(run.SUPPORTED_DATASETS) + [k.upper() for k in EXTRA_DATASETS]
    for module in (run, mmsa):
        replace(module, "SUPPORTED_MODELS", models)
        replace(module, "SUPPORTED_DATASETS", datasets)


def _amio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, args: Mapping[str, Any]) -> None:
        factory = EXTRA_MODELS.get(args["model_name"])
        if factory is None:
            original(self, args)
            self.MODEL_MAP.update(EXTRA_MODELS)
            return
        # MMSA 2.2.1's AMIO.__init__ for a key MMSA's MODEL_MAP lacks (same attributes)
        from khar_mmsa.integration.model_and_trainer import init_amio
        init_amio(self, args, factory)
    return __init__


def _atio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any) -> None:
        original(self)
        self.TRAIN_MAP.update(EXTRA_TRAINERS)
    return __init__


# -- datasets ----------------------------------------------------------------------------------
def _add_datasets() -> None:
    data_loader = mmsa_module("MMSA.data_loader")
    metrics_cls = mmsa_module("MMSA.utils.metricsTop").MetricsTop
    replace(data_loader.MMDataset, "__init__", _dataset_init(data_loader.MMDataset.__init__))
    replace(metrics_cls, "__init__", _metrics_init(metrics_cls.__init__))
    replace(data_loader, "pickle", FeatureServer(data_loader.pickle))
    run = mmsa_module("MMSA.run")
    replace(run, "pickle", FeatureServer(run.pickle))


def _dataset_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, args: Any, mode: str = "train") -> None:
        name = args["dataset_name"]
        if name not in EXTRA_DATASETS:
            original(self, args, mode)
            return
        # MMSA keys its loader and its T/A/V labels on the literal name: borrow the base
        # dataset's name for the duration of the call.
        args["dataset_name"] = EXTRA_DATASETS[name]
        try:
            original(self, args, mode)
        finally:
            args["dataset_name"] = name
    return __init__


def _metrics_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, train_mode: str) -> None:
        original(self, train_mode)
        for extra, base in EXTRA_DATASETS.items():
            self.metrics_dict[extra.upper()] = self.metrics_dict[base.upper()]
    return __init__


# -- configs -----------------------------------------------------------------------------------
def _add_configs() -> None:
    config, run = mmsa_module("MMSA.config"), mmsa_module("MMSA.run")
    original_code = run.MMSA_run.__code__  # MMSA's own body, before _add_entry_points routes the function
    wrapped = {f"get_config_{kind}": _config_getter(getattr(config, f"get_config_{kind}"), kind, original_code)
               for kind in ("regression", "tune")}
    for module in (config, run, mmsa_module("MMSA")):
        for name, fn in wrapped.items():
            replace(module, name, fn)


def _config_getter(original: Callable, kind: str, original_mmsa_run_code: Any) -> Callable:
    from khar_mmsa.integration.configs import config_for, is_default_config_file, knows

    @functools.wraps(original)
    def get_config(model_name: str, dataset_name: str, config_file: Any = "", *args: Any, **kwargs: Any) -> Any:
        if is_extra_model(model_name) and _same_function(sys._getframe(1).f_code, original_mmsa_run_code):
            raise ImportOrderError(
                f"MMSA_run({model_name!r}, ...) reached MMSA's own MMSA_run, bound before khar_mmsa "
                f"registered {model_name!r}. Import khar_mmsa before 'from MMSA import MMSA_run' "
                f"(or call khar_mmsa.run(...), which takes the same arguments).")
        if is_default_config_file(config_file, kind) and not knows(model_name, dataset_name, kind):
            random_choice = bool(kwargs.get("random_choice", args[0] if args else True))
            return config_for(model_name, dataset_name, kind, random_choice=random_choice)
        return original(model_name, dataset_name, config_file, *args, **kwargs)
    return get_config


# -- entry points ------------------------------------------------------------------------------
def _add_entry_points() -> None:
    run, mmsa = mmsa_module("MMSA.run"), mmsa_module("MMSA")
    bound = run.MMSA_run  # the function a `from MMSA import MMSA_run` before khar_mmsa holds
    mmsa_run, mmsa_test = _mmsa_run(_copy_of(bound)), _mmsa_test(run.MMSA_test)
    for module in (run, mmsa):
        replace(module, "MMSA_run", mmsa_run)
        replace(module, "MMSA_test", mmsa_test)
    _route_bound_function(bound, mmsa_run, run)


#: The name, in ``MMSA.run``, through which MMSA's own ``MMSA_run`` function object reaches our route.
ROUTE_NAME = "_khar_mmsa_MMSA_run"


def _copy_of(function: Callable) -> Callable:
    """A new function object with ``function``'s body, globals, defaults and name: MMSA's own
    ``MMSA_run`` for MMSA's own models, whatever happens to the original object."""
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__, copy.__doc__, copy.__module__ = function.__qualname__, function.__doc__, function.__module__
    return copy


def _route_bound_function(bound: Callable, route: Callable, module: Any) -> None:
    """Give MMSA's ``MMSA_run`` function object a body that calls ``route`` with the same arguments,
    so that an ``MMSA_run`` imported before khar_mmsa (``from MMSA import MMSA_run`` first) routes
    'khar' to our runner before MMSA makes any folder or log, and runs MMSA's own body (the copy
    in ``route``) for every other model.  Its defaults stay on the object; only the body changes,
    and :func:`~.replacements.restore_all` puts the original body back."""
    params = list(inspect.signature(bound).parameters.values())
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        raise TypeError(f"{bound.__qualname__}: a signature with only plain parameters was expected")
    names = [p.name for p in params]
    namespace: Dict[str, Any] = {}
    exec(f"def {bound.__name__}({', '.join(names)}):\n"  # noqa: S102 - a fixed trampoline of known names
         f"    return {ROUTE_NAME}({', '.join(f'{n}={n}' for n in names)})\n", namespace)
    replace(module, ROUTE_NAME, route)
    replace(bound, "__code__", namespace[bound.__name__].__code__)


def _same_function(code: Any, original: Any) -> bool:
    """``code`` is ``original``'s, or the same function's compiled again by ``importlib.reload``."""
    return code is original or (code.co_name, code.co_filename) == (original.co_name, original.co_filename)


def _mmsa_run(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        from khar_mmsa.io.names import check_run_names  # MMSA makes file names of them: first
        check_run_names(bound.arguments.get("model_name"), bound.arguments.get("dataset_name"))
        if not is_extra_model(bound.arguments.get("model_name")):
            return original(*args, **kwargs)
        from khar_mmsa.integration.runner import run
        return run(**bound.arguments)
    return MMSA_run


def _mmsa_test(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_test(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        name = _test_model_name(bound.arguments.get("config"))
        if not is_extra_model(name):
            return original(*args, **kwargs)
        from khar_mmsa.integration.mmsa_test import mmsa_test
        return mmsa_test(**bound.arguments)
    return MMSA_test


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
