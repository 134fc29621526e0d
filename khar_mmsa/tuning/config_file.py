"""The selected candidate's config as a config file in MMSA's regression schema."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from khar_mmsa.config import RUN_PLACE_KEYS
from khar_mmsa.tuning.values import json_value, jsonable
from khar_mmsa.io.files import atomic_write_text

#: ``args`` keys that describe the run, not the config (left out of the best-config JSON).
RUNTIME_KEYS = RUN_PLACE_KEYS | {"model_name", "dataset_name", "d_paras"}


def write_mmsa_config(path: os.PathLike, args: Mapping[str, Any]) -> Path:
    """Write ``args`` (one candidate's full config) as a config file in MMSA's regression schema.

    ``MMSA_run(args.model_name, args.dataset_name, config_file=path)`` reads back the same config:
    the dataset block carries ``featurePath`` (``custom_feature`` when one was given, else the
    resolved ``featurePath``; made absolute when the file exists) and the model's ``datasetParams`` every other
    setting.
    """
    model, dataset = str(args["model_name"]), str(args["dataset_name"])
    params = {k: json_value(v) for k, v in args.items() if k not in RUNTIME_KEYS and jsonable(v)}
    params.pop("need_data_aligned", None)
    feature = Path(str(args.get("custom_feature") or args["featurePath"]))
    dataset_block = {"featurePath": str(feature.resolve() if feature.exists() else feature)}  # -c from any folder
    schema = {
        "datasetCommonParams": {"dataset_root_dir": "",
                                dataset: {"unaligned": dataset_block, "aligned": dataset_block}},
        model: {"commonParams": {"need_data_aligned": bool(args.get("need_data_aligned", False))},
                "datasetParams": {dataset: params}},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return path
