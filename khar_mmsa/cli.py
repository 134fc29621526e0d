"""``python -m khar_mmsa``: MMSA's command line with KHaR, plus ``tune`` and ``sweep`` for Ray.

::

    python -m khar_mmsa -m khar -d mosi -s 1111 -s 1112 -g 0          # as python -m MMSA
    python -m khar_mmsa -m khar -d mosi -t -tt 20                     # tune mode, selects on validation
    python -m khar_mmsa tune -m khar -d mosi --samples 20 --address auto --gpus-per-trial 0.5
    python -m khar_mmsa sweep -m khar tfn -d mosi -s 1111 1112 --executor ray --address auto

The first form takes ``python -m MMSA``'s flags (MMSA 2.2.1's ``__main__``) with the same
meaning and defaults, except that an empty ``-c`` / ``--model-save-dir`` / ``--res-save-dir`` /
``--log-dir`` / ``-F*`` means MMSA's default (MMSA's own command line passes the empty string on
and fails), ``-g`` takes integers, and ``--custom-feature`` and ``--set KEY=VALUE`` reach
``MMSA_run``'s ``custom_feature=`` and ``config=``.  ``-m`` accepts every model of MMSA's config
files plus ``khar``; ``-d`` every dataset plus ``simsv2``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SUBCOMMANDS = ("tune", "sweep")


def known_models() -> List[str]:
    """Every model key of MMSA's config files, plus ours (``khar``)."""
    from khar_mmsa.integration.configs import merged_config
    return sorted(k for k in merged_config("regression") if k != "datasetCommonParams")


def known_datasets() -> List[str]:
    """Every dataset key of MMSA's config files, plus ours (``simsv2``)."""
    from khar_mmsa.integration.configs import merged_config
    return sorted(k for k in merged_config("regression")["datasetCommonParams"] if k != "dataset_root_dir")


def _overrides(pairs: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``KEY=VALUE`` pairs -> dict; VALUE is read as JSON (numbers, true, lists), else as a string.

    A boolean setting (:data:`khar_mmsa.config.BOOL_KEYS`: ``trust_pickle``, ``use_bert``,
    ``amp`` ...) takes true/false, 1/0 or yes/no in any case (``trust_pickle=False`` is false);
    any other value ends the command with an error naming the key."""
    from khar_mmsa.config import BOOL_KEYS, ConfigError, parse_bool
    out: Dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        if key in BOOL_KEYS:
            try:
                out[key] = parse_bool(key, value)
            except ConfigError as exc:
                raise SystemExit(f"--set {pair!r}: {exc}") from None
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _none_if_empty(value: Any) -> Any:
    return None if value in ("", None) else value


# ============================================================================================
# python -m khar_mmsa [MMSA's flags]
# ============================================================================================
def train_parser() -> argparse.ArgumentParser:
    models, datasets = known_models(), known_datasets()
    parser = argparse.ArgumentParser(
        prog="python -m khar_mmsa",
        description="Train and test MMSA models, KHaR included (the flags of `python -m MMSA`).",
        epilog=(f"models: {', '.join(models)}\ndatasets: {', '.join(datasets)}\n\n"
                "subcommands (Ray; pip install -e \".[ray]\"):\n"
                "  python -m khar_mmsa tune --help    Ray Tune search on the validation KeyEval (ASHA)\n"
                "  python -m khar_mmsa sweep --help   models x seeds as Ray tasks, resumable"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", type=str.lower, default="lf_dnn", choices=models, metavar="MODEL",
                        help=f"Name of model, one of: {', '.join(models)}. Default: lf_dnn")
    parser.add_argument("-d", "--dataset", type=str.lower, default="sims", choices=datasets, metavar="DATASET",
                        help=f"Name of dataset, one of: {', '.join(datasets)}. Default: sims")
    parser.add_argument("-c", "--config", type=str, default="",
                        help="Path to a config file in MMSA's schema. Default: MMSA's with khar-mmsa's merged in")
    parser.add_argument("-t", "--tune", action="store_true",
                        help="Tune hyper parameters (selects on the validation split). Default: False")
    parser.add_argument("-tt", "--tune-times", type=int, default=50, help="Number of candidates to tune. Default: 50")
    parser.add_argument("-s", "--seeds", action="append", type=int, default=[],
                        help="Random seed; repeat for several. Default: [1111, 1112, 1113, 1114, 1115]")
    parser.add_argument("-n", "--num-workers", type=int, default=None,
                        help="Data loader workers. Default: MMSA's 4 with CUDA, 0 without")
    parser.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Verbose level of stdout: 0 error, 1 info, 2 debug. Default: 1")
    parser.add_argument("--model-save-dir", type=str, default="", help='Default: "~/MMSA/saved_models"')
    parser.add_argument("--res-save-dir", type=str, default="", help='Default: "~/MMSA/results"')
    parser.add_argument("--log-dir", type=str, default="", help='Default: "~/MMSA/logs"')
    parser.add_argument("-g", "--gpu-ids", action="append", type=int, default=[],
                        help="GPU to use (one). Empty: the most memory-free GPU; the CPU without CUDA. Default: []")
    parser.add_argument("-Ft", "--feature-T", type=str, default="", help="Custom text feature file. Default: \"\"")
    parser.add_argument("-Fa", "--feature-A", type=str, default="", help="Custom audio feature file. Default: \"\"")
    parser.add_argument("-Fv", "--feature-V", type=str, default="", help="Custom video feature file. Default: \"\"")
    parser.add_argument("--custom-feature", type=str, default="",
                        help="One feature pickle with all three modalities (MMSA_run's custom_feature)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="Override one config key (MMSA_run's config=; VALUE read as JSON). Repeatable")
    return parser


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(argv)
    import khar_mmsa  # noqa: F401  - registers 'khar' before MMSA_run is looked up
    from MMSA import MMSA_run
    kwargs: Dict[str, Any] = dict(
        config_file=_none_if_empty(args.config), config=_overrides(args.overrides) or None, seeds=args.seeds,
        is_tune=args.tune, tune_times=args.tune_times, custom_feature=_none_if_empty(args.custom_feature),
        feature_T=_none_if_empty(args.feature_T), feature_A=_none_if_empty(args.feature_A),
        feature_V=_none_if_empty(args.feature_V), gpu_ids=args.gpu_ids, verbose_level=args.verbose,
        model_save_dir=_none_if_empty(args.model_save_dir), res_save_dir=_none_if_empty(args.res_save_dir),
        log_dir=_none_if_empty(args.log_dir))
    if args.num_workers is not None:
        kwargs["num_workers"] = args.num_workers
    result = MMSA_run(args.model, args.dataset, **kwargs)
    if isinstance(result, dict):
        print(json.dumps(result, indent=1, default=str))
    return 0


# ============================================================================================
# python -m khar_mmsa tune
# ============================================================================================
def tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m khar_mmsa tune",
        description="Ray Tune search over the model's config_tune.json grid, scored per epoch on the validation "
                    "KeyEval (ASHA stops poor trials early); writes the best config as an MMSA config file.")
    parser.add_argument("-m", "--model", type=str.lower, required=True, choices=known_models(), metavar="MODEL")
    parser.add_argument("-d", "--dataset", type=str.lower, required=True, choices=known_datasets(), metavar="DATASET")
    parser.add_argument("-c", "--config", default="", help="tune config file in MMSA's schema (default: ours merged with MMSA's)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="fixed override of one config key in every trial (VALUE read as JSON)")
    parser.add_argument("--custom-feature", default="", help="feature pickle with all modalities")
    parser.add_argument("-s", "--seed", type=int, default=1111, help="training seed of every trial (default 1111)")
    parser.add_argument("--samples", type=int, default=20, help="trials drawn from the grid (default 20)")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="ASHA's max_t in epochs (default: the config's epochs, else 100)")
    parser.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial (default 1)")
    parser.add_argument("--reduction-factor", type=float, default=2, help="ASHA's reduction factor (default 2)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="a fraction shares one GPU")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what resources fit)")
    parser.add_argument("--address", default=None, help="Ray cluster: 'auto' or host:port (default: a local Ray instance)")
    parser.add_argument("--out", type=Path, default=Path("ray-tune"), help="Ray Tune's storage folder and the best config")
    parser.add_argument("--test-best", action="store_true",
                        help="afterwards, train the best config once with MMSA_run and report its test score")
    return parser


def tune_main(argv: Sequence[str]) -> int:
    args = tune_parser().parse_args(argv)
    from khar_mmsa.experiments import ray_tune
    outcome = ray_tune.search(
        args.model, args.dataset, config_file=_none_if_empty(args.config), config=_overrides(args.overrides),
        custom_feature=_none_if_empty(args.custom_feature), seed=args.seed, num_samples=args.samples,
        max_epochs=args.max_epochs, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, address=args.address, out_dir=args.out)
    print(f"best by validation {outcome.metric} = {outcome.best_value:.4f} ({outcome.trials} trials, "
          f"epochs trained per trial {outcome.epochs_per_trial}): {json.dumps(outcome.best_params, default=str)}")
    print(f"config file: {outcome.config_file}")
    if args.test_best:
        row = ray_tune.test_best(outcome, seed=args.seed, out_dir=args.out / "test-best")
        print(json.dumps(row, indent=1, default=str))
    return 0


# ============================================================================================
# python -m khar_mmsa sweep
# ============================================================================================
def sweep_parser() -> argparse.ArgumentParser:
    from khar_mmsa.experiments.sweep import add_executor_args
    parser = argparse.ArgumentParser(
        prog="python -m khar_mmsa sweep",
        description="MMSA_run of each model x seed as its own run (a Ray task with --executor ray); a manifest in "
                    "--out makes it resumable; the driver writes one results table.")
    parser.add_argument("-m", "--models", type=str.lower, nargs="+", required=True, choices=known_models(), metavar="MODEL")
    parser.add_argument("-d", "--dataset", type=str.lower, required=True, choices=known_datasets(), metavar="DATASET")
    parser.add_argument("-s", "--seeds", type=int, nargs="+", default=[1111, 1112, 1113, 1114, 1115])
    parser.add_argument("--custom-feature", required=True, help="feature pickle with all modalities (every run reads it)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="MODEL:KEY=VALUE",
                        help="config override for one model (or KEY=VALUE for all); VALUE read as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    parser.add_argument("--out", type=Path, required=True, help="work folder: one folder per run, the manifest, results.csv")
    add_executor_args(parser)
    return parser


def sweep_main(argv: Sequence[str]) -> int:
    args = sweep_parser().parse_args(argv)
    from khar_mmsa.experiments.sweep import RunSpec, executor_options, run_sweep, spec_table
    per_model: Dict[str, Dict[str, Any]] = {m: {} for m in args.models}
    for pair in args.overrides or []:
        target, sep, rest = pair.partition(":")
        if sep and target.lower() in per_model and "=" in rest:
            per_model[target.lower()].update(_overrides([rest]))
        else:
            for cfg in per_model.values():
                cfg.update(_overrides([pair]))
    feature = str(Path(args.custom_feature).resolve())
    specs = [RunSpec(model=m, dataset=args.dataset, seed=s, feature_path=feature, config=per_model[m],
                     out_dir=str(args.out / f"{m}-seed{s}"), threads=args.threads)
             for m in args.models for s in args.seeds]
    outcome = run_sweep(specs, executor_options(args), manifest_path=args.out / "sweep-manifest.jsonl",
                        name=f"sweep {args.dataset}")
    import pandas as pd
    table = pd.DataFrame(spec_table(specs, outcome))
    csv = args.out / "results.csv"
    table.to_csv(csv, index=False)
    summary = table.drop(columns=["run_id", "host", "variant", "dataset"]).groupby("model", sort=False).mean(numeric_only=True)
    print(summary.drop(columns=["seed"]).round(4).to_string())
    print(f"per-run results: {csv}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.getLogger("MMSA").setLevel(logging.INFO)
    if argv and argv[0] in SUBCOMMANDS:
        if not logging.getLogger("MMSA").handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            logging.getLogger("MMSA").addHandler(handler)
        return {"tune": tune_main, "sweep": sweep_main}[argv[0]](argv[1:])
    return train_main(argv)
