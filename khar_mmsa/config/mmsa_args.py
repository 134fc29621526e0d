"""MMSA's ``args`` and the KHaR config: which keys are MMSA's, and how its keys map onto fields.

MMSA hands every model an ``EasyDict`` merged from its JSON, the ``config=`` override and the
loader's ``feature_dims``/``seq_lens``.  :func:`mmsa_kwargs` turns it into KHaRConfig keyword
arguments once, at the boundary (``KHaRConfig.from_mmsa_args``): MMSA's own runtime keys are
ignored, ``KeyEval`` is ``key_eval`` and ``use_finetune`` is ``finetune_bert``; any other unknown
key is an error naming the closest field.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, Iterable, Mapping

from khar_mmsa.config.booleans import parse_bool
from khar_mmsa.config.errors import ConfigError

#: ``args`` keys that say where things are and how this process runs, not what is trained: left
#: out of a run's identity (:mod:`khar_mmsa.runs.run_state`) and of a tuned config file
#: (:mod:`khar_mmsa.tuning`), each of which adds its own few.
RUN_PLACE_KEYS = frozenset({
    "model_save_path", "device", "train_mode", "cur_seed", "seed", "custom_feature", "featurePath",
    "feature_T", "feature_A", "feature_V", "log_dir", "verbose_level", "callbacks",
})
#: Keys MMSA itself puts into ``args`` (loader, runner, dataset block): accepted and ignored by the
#: KHaR config.  MMSA's ``use_finetune`` (the BERT models' "fine-tune the text encoder" switch) is
#: not ignored: it is read as ``finetune_bert``.
MMSA_RUNTIME_KEYS = RUN_PLACE_KEYS | {
    "model_name", "dataset_name", "feature_dims", "seq_lens", "train_samples", "num_classes", "language",
    "KeyEval", "missing_rate", "missing_seed", "need_data_aligned", "need_model_aligned", "need_normalized",
    "use_bert", "transformers", "data_missing", "d_paras", "early_stop", "trust_pickle",
}
#: Boolean settings of MMSA's own configs (config_regression.json) and of the plug-in's runner.
#: Each is parsed by :func:`~khar_mmsa.config.booleans.parse_bool` wherever it is read; the
#: KHaR fields typed ``bool`` join them in ``khar_mmsa.config.BOOL_KEYS``.
MMSA_BOOL_KEYS = frozenset({
    "add_va", "attn_mask", "bidirectional", "contrast", "data_missing", "deal_missing",
    "excludeZero", "need_data_aligned", "need_model_aligned", "need_normalize", "need_normalized",
    "save_labels", "use_bert", "use_bert_finetune", "use_cmd_sim", "use_finetune", "use_linear",
    "without_generator", "trust_pickle", "need_unimodal_labels",
})


def mmsa_kwargs(args: Mapping[str, Any], field_names: Iterable[str], strict: bool = True) -> Dict[str, Any]:
    """The KHaRConfig keyword arguments of MMSA's merged ``args`` (fields ``field_names``).

    MMSA's own runtime keys are left out; ``KeyEval`` maps to ``key_eval`` and MMSA's
    ``use_finetune`` to ``finetune_bert`` (both given with different values is an error); with
    ``strict``, any other key that is not a field raises :class:`ConfigError` naming the closest
    field.
    """
    known = set(field_names)
    kwargs: Dict[str, Any] = {}
    unknown = []
    args = dict(args)
    if "use_finetune" in args:
        value = parse_bool("use_finetune", args.pop("use_finetune"))
        if "finetune_bert" in args and parse_bool("finetune_bert", args["finetune_bert"]) != value:
            raise ConfigError(
                f"use_finetune={value!r} and finetune_bert={args['finetune_bert']!r} disagree: "
                f"KHaR reads MMSA's use_finetune as finetune_bert; set only one of them")
        args["finetune_bert"] = value
    for key, value in args.items():
        if key in known:
            kwargs[key] = value
        elif key == "KeyEval":
            kwargs["key_eval"] = value
        elif key not in MMSA_RUNTIME_KEYS:
            unknown.append(key)
    if unknown and strict:
        msgs = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            msgs.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError("unknown KHaR config key(s): " + ", ".join(msgs))
    return kwargs
