"""What one run of a sweep is (:class:`RunSpec`) and what makes two runs the same run (its identity)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from khar_mmsa.config import PATH_FIELDS, fingerprint
from khar_mmsa.io import identity as content_identity

#: The runner a spec names by default: :func:`khar_mmsa.experiments.sweep.execute.mmsa_run_one`,
#: looked up on the package (``khar_mmsa.experiments.sweep``), where it is re-exported.
DEFAULT_RUNNER = "khar_mmsa.experiments.sweep:mmsa_run_one"
#: Hex digits of the identity's SHA-256 kept as a run id.
RUN_ID_HEX_DIGITS = 16


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep.

    ``config`` are ``MMSA_run(config=...)`` overrides (JSON-able values); ``runner`` is the
    ``module:function`` that executes the spec, called as ``runner(spec, feature_path)`` and
    returning a JSON-able dict (default: :func:`~khar_mmsa.experiments.sweep.execute.mmsa_run_one`);
    ``threads`` sets torch's CPU threads for the run (same threads, same numbers, whatever the executor).
    """

    model: str
    dataset: str
    seed: int
    feature_path: str
    out_dir: str
    variant: str = "default"
    config: Mapping[str, Any] = field(default_factory=dict)
    runner: str = DEFAULT_RUNNER
    threads: Optional[int] = None
    label: str = ""

    def identity(self) -> Dict[str, Any]:
        """What makes two runs the same run: model, dataset, seed, variant, config hash (without
        the fields that only say where a file lives, such as ``pretrained_adapters_path``), runner,
        the data file by content (name and SHA-256: a pickle rebuilt byte-identical keeps its
        identity, one with other bytes of the same size does not) and the code version."""
        config = {k: v for k, v in self.config.items() if k not in PATH_FIELDS}
        return {"model": self.model, "dataset": self.dataset, "seed": int(self.seed),
                "variant": self.variant, "config_hash": fingerprint(config),
                "runner": self.runner, "data": content_identity.data_identity(self.feature_path),
                "code": content_identity.code_version()}

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return digest[:RUN_ID_HEX_DIGITS]

    @property
    def title(self) -> str:
        return self.label or f"{self.model}/{self.dataset}/{self.variant}/seed {self.seed}"
