"""What ``MMSA_run`` logs: the arguments the run uses, plain numbers, one results path.

MMSA 2.2.1's ``MMSA_run`` logs its ``args`` dict before the data is read -- one line of about
1,000 characters showing MMSA's default ``featurePath`` even when ``custom_feature`` is read, and
the config's ``seq_lens`` instead of the data's -- then ``Result for seed ...`` with numpy reprs
(``np.float64(0.4062)``), then the private temporary CSV path of :mod:`.mmsa_run` before ours.

``MMSA_run`` logs through the logger ``MMSA.run._set_logger`` returns; :mod:`.log_handlers`' wrapper
of that function returns a :class:`RunLogger` (the trainers keep the real logger) which, inside a
patched ``MMSA_run`` call only, holds back the args dump (the
loader hook logs :func:`log_run_args` once the data is read), rewrites ``Result for seed`` from
the per-seed results as plain numbers wrapped at :data:`khar_mmsa.reporting.log_format.LINE_WIDTH`, and drops
the temporary results path.  Everything else goes to the real logger unchanged.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

from khar_mmsa.integration.run_context import current_run

logger = logging.getLogger("MMSA")

_RESULT_FOR_SEED = re.compile(r"^Result for seed (\S+): ")
#: Keys :func:`log_run_args` shows first, on lines of their own.
_FILE_KEYS = ("custom_feature", "featurePath", "feature_T", "feature_A", "feature_V")


class RunLogger:
    """``MMSA.run``'s logger as ``MMSA_run`` uses it; see the module docstring."""

    def __init__(self, wrapped: logging.Logger) -> None:
        self._wrapped = wrapped

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        ctx = current_run()
        if ctx is not None and not ctx.is_tune:
            if isinstance(msg, Mapping) or msg == "Running with args:":
                return  # the loader hook logs the args as used (log_run_args)
            if isinstance(msg, str):
                seed = _RESULT_FOR_SEED.match(msg)
                if seed and ctx.results:
                    log_seed_result(seed.group(1), ctx.results[-1])
                    return
                if ctx.private_results_dir and msg.startswith("Results saved to") \
                        and ctx.private_results_dir in msg:
                    return  # a temporary folder; MMSA_run's wrapper logs the real CSV
        self._wrapped.info(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def log_seed_result(seed: str, result: Mapping[str, Any]) -> None:
    """``Result for seed S: Metric: value ...`` with plain numbers, wrapped."""
    from khar_mmsa.reporting.log_format import log_fields, plain_value
    numbers = {k: v for k, v in plain_value(dict(result)).items() if isinstance(v, (int, float))}
    log_fields(logger, f"Result for seed {seed}:", numbers, sep=": ")


def log_run_args(args: Mapping[str, Any]) -> None:
    """Log the arguments of the running ``MMSA_run`` call as the run uses them (once per call):
    the feature file actually read, ``seq_lens``/``feature_dims`` as MMSA's loader found them in
    the data, in MMSA's (text, audio, vision) order, the folder ``pretrained`` resolves to, then
    every other key, wrapped."""
    from khar_mmsa.reporting.log_format import LINE_WIDTH, format_value, wrap_fields
    ctx = current_run()
    if ctx is not None:
        if ctx.args_logged:
            return
        ctx.args_logged = True
    logger.info("Running with args (as this run uses them):")
    if args.get("custom_feature"):
        logger.info(f"  feature file: {args['custom_feature']} (custom_feature; featurePath is not read)")
    else:
        logger.info(f"  feature file: {args.get('featurePath')} (featurePath)")
    for key in ("feature_T", "feature_A", "feature_V"):
        if args.get(key):
            logger.info(f"  {key}: {args[key]}")
    for key in ("seq_lens", "feature_dims"):
        if key in args:
            logger.info(f"  {key} (text, audio, vision): {format_value(list(args[key]), None)} (from the data)")
    if args.get("pretrained"):
        logger.info(f"  pretrained: {_pretrained_text(str(args['pretrained']))}")
    shown = set(_FILE_KEYS) | {"seq_lens", "feature_dims", "pretrained"}
    rest = [(k, v) for k, v in args.items() if k not in shown]
    for line in wrap_fields(" ", rest, width=LINE_WIDTH, sep="=", digits=None):
        logger.info(line)


def _pretrained_text(name: str) -> str:
    from khar_mmsa.model.text_encoders import local_folder
    folder = local_folder(name)
    if folder is None:
        return f"{name} (hub name)"
    return name if str(folder) == name else f"{name} -> {folder}"
