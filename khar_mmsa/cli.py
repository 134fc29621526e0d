"""``python -m khar_mmsa``: MMSA's command line with KHaR, plus ``tune`` and ``sweep`` for Ray.

::

    python -m khar_mmsa -m khar -d mosi -s 1111 -s 1112 -g 0          # as python -m MMSA
    python -m khar_mmsa -m khar -d mosi -t -tt 20                     # tune mode, selects on validation
    python -m khar_mmsa tune -m khar -d mosi --samples 20 --address auto --gpus-per-trial 0.5
    python -m khar_mmsa sweep -m khar tfn -d mosi -s 1111 -s 1112 --executor ray --address auto

The first form takes ``python -m MMSA``'s flags (MMSA 2.2.1's ``__main__``) with the same
meaning and defaults, except that an empty ``-c`` / ``--model-save-dir`` / ``--res-save-dir`` /
``--log-dir`` / ``-F*`` means MMSA's default (MMSA's own command line passes the empty string on
and fails), ``-g`` takes integers, and ``--custom-feature`` and ``--set KEY=VALUE`` reach
``MMSA_run``'s ``custom_feature=`` and ``config=``.  ``-m`` accepts every model of MMSA's config
files plus ``khar``; ``-d`` every dataset plus ``simsv2``.

Every command takes ``--threads N`` (``torch.set_num_threads``) and refuses a seed given twice;
``sweep`` takes seeds as MMSA does (``-s 1111 -s 1112``) or as one list (``-s 1111 1112``).
The usual failures (a missing text encoder or feature file, a bad config value, a locked sweep
folder, no Ray cluster) end with one line on stderr, ``python -m khar_mmsa: error: ...``, in
command-line spelling (``--set pretrained=...``), also written to the run's log; ``--traceback``
shows the full traceback instead.  Nothing heavy (torch, MMSA, transformers, Ray) is imported
until a command runs, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from khar_mmsa.cli_errors import ERROR_LOG, USER_ERRORS, cli_message, report, user_error  # noqa: F401  (cli.USER_ERRORS)
from khar_mmsa.mmsa_conventions import MMSA_DEFAULT_FOLDERS, MMSA_DEFAULT_SEEDS, default_folder

SUBCOMMANDS = ("tune", "sweep")
PROG = "python -m khar_mmsa"

logger = logging.getLogger(f"MMSA.{__name__}")


def _config_keys() -> Dict[str, List[str]]:
    """Model and dataset keys of MMSA's ``config_regression.json`` and our overlay, read as JSON
    (MMSA's file found without importing MMSA)."""
    from khar_mmsa.registration.configs import installed_mmsa_config_file, overlay
    configs = [overlay("regression")]
    path = installed_mmsa_config_file("regression")
    if path is not None:
        configs.append(json.loads(path.read_text(encoding="utf-8")))
    models, datasets = set(), set()
    for config in configs:
        models.update(k for k in config if k != "datasetCommonParams")
        datasets.update(k for k in config.get("datasetCommonParams", {}) if k != "dataset_root_dir")
    return {"models": sorted(models), "datasets": sorted(datasets)}


def known_models() -> List[str]:
    """Every model key of MMSA's config files, plus ours (``khar``)."""
    return _config_keys()["models"]


def known_datasets() -> List[str]:
    """Every dataset key of MMSA's config files, plus ours (``simsv2``)."""
    return _config_keys()["datasets"]


# ---- shared options ----------------------------------------------------------------------------
def subcommand_parser(name: str, description: str, models: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of ``python -m khar_mmsa <name>`` with its model and dataset flags: ``-m/--model``
    (one), or with ``models='+'`` ``-m/--models`` (one or more); ``-d/--dataset``."""
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=description)
    parser.add_argument("-m", "--models" if models else "--model", type=str.lower, required=True,
                        choices=known_models(), metavar="MODEL", **({"nargs": models} if models else {}))
    parser.add_argument("-d", "--dataset", type=str.lower, required=True, choices=known_datasets(), metavar="DATASET")
    return parser


def add_threads_arg(parser: argparse.ArgumentParser, help_text: str = "torch CPU threads "
                    "(torch.set_num_threads; default: torch's own; 1 is often fastest on a busy CPU)") -> None:
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=help_text)


def apply_threads(threads: Optional[int]) -> None:
    """``torch.set_num_threads(threads)`` when given (torch imported only then)."""
    if threads:
        import torch
        torch.set_num_threads(int(threads))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def _seed(text: str) -> int:
    """A ``-s`` value: an integer in ``[0, 2**32)`` (:func:`khar_mmsa.mmsa_conventions.check_seed`)."""
    from khar_mmsa.mmsa_conventions import SeedError, check_seed
    try:
        return check_seed(int(text), "-s")
    except ValueError as exc:  # int('x') and SeedError alike: argparse's one line, exit 2
        raise argparse.ArgumentTypeError(str(exc) if isinstance(exc, SeedError) else f"{text!r} is not an integer")


def check_distinct_seeds(parser: argparse.ArgumentParser, seeds: Sequence[int]) -> None:
    """A seed given twice is refused (its second run would only copy the first: std 0)."""
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        parser.error(f"seed(s) {', '.join(map(str, repeated))} given more than once in -s; each seed must be "
                     f"distinct")


class _Once(argparse.Action):
    """A flag that may be given once: a second one is an error instead of replacing the first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        if getattr(namespace, f"_{self.dest}_given", False):
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}): "
                         f"{self.help.split(';')[0] if self.help else 'one value'}")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, values)


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


def check_feature_files(**flags: Any) -> None:
    """Each feature file given on the command line (``custom_feature='x.pkl'`` for
    ``--custom-feature``) exists: else one ``FileNotFoundError`` naming the flag, before torch or
    MMSA is imported and before any results, model or log folder is made."""
    for name, value in flags.items():
        if _none_if_empty(value) is not None and not Path(value).is_file():
            flag = "-F" + name[-1].lower() if name.startswith("feature_") else "--" + name.replace("_", "-")
            raise FileNotFoundError(f"{flag} {value}: no such feature file (nothing was trained, no folder made)")


# ============================================================================================
# python -m khar_mmsa [MMSA's flags]
# ============================================================================================
def train_parser() -> argparse.ArgumentParser:
    models, datasets = known_models(), known_datasets()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and test MMSA models, KHaR included (the flags of `python -m MMSA`).",
        epilog=(f"models: {', '.join(models)}\ndatasets: {', '.join(datasets)}\n\n"
                "subcommands:\n"
                "  python -m khar_mmsa tune --help    Ray Tune search on the validation KeyEval (ASHA; "
                "needs pip install -e \".[ray]\")\n"
                "  python -m khar_mmsa sweep --help   models x seeds, resumable: a local loop, or Ray tasks "
                "with --executor ray (needs .[ray])\n\n"
                "--traceback (any command): the full traceback instead of a one-line error"),
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
    parser.add_argument("-s", "--seeds", action="append", type=_seed, default=[],
                        help=f"Random seed; repeat for several. Default: {list(MMSA_DEFAULT_SEEDS)}")
    parser.add_argument("-n", "--num-workers", type=int, default=None,
                        help="Data loader workers. Default: MMSA's 4 with CUDA, 0 without")
    parser.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Verbose level of stdout: 0 error, 1 info, 2 debug. Default: 1")
    parser.add_argument("--model-save-dir", type=str, default="", help=f'Default: "~/{MMSA_DEFAULT_FOLDERS["model_save_dir"]}"')
    parser.add_argument("--res-save-dir", type=str, default="", help=f'Default: "~/{MMSA_DEFAULT_FOLDERS["res_save_dir"]}"')
    parser.add_argument("--log-dir", type=str, default="", help=f'Default: "~/{MMSA_DEFAULT_FOLDERS["log_dir"]}"')
    parser.add_argument("-g", "--gpu-ids", action="append", type=int, default=[],
                        help="GPU to use (one). Empty: the most memory-free GPU; the CPU without CUDA. Default: []")
    parser.add_argument("-Ft", "--feature-T", type=str, default="", help="Custom text feature file. Default: \"\"")
    parser.add_argument("-Fa", "--feature-A", type=str, default="", help="Custom audio feature file. Default: \"\"")
    parser.add_argument("-Fv", "--feature-V", type=str, default="", help="Custom video feature file. Default: \"\"")
    parser.add_argument("--custom-feature", type=str, default="",
                        help="One feature pickle with all three modalities (MMSA_run's custom_feature)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="Override one config key (MMSA_run's config=; VALUE read as JSON). Repeatable")
    add_threads_arg(parser)
    return parser


def _mmsa_run() -> Any:
    """khar-mmsa's runner (``khar_mmsa.run``: ``MMSA_run``'s arguments, any model; returns the
    numeric results row), looked up here so that ``--help`` stays light."""
    import khar_mmsa
    return khar_mmsa.run


def train_main(argv: Sequence[str]) -> int:
    parser = train_parser()
    args = parser.parse_args(argv)
    check_distinct_seeds(parser, args.seeds)
    from khar_mmsa.io.names import check_run_names
    check_run_names(args.model, args.dataset)  # before the error log's name is made of them
    overrides = _overrides(args.overrides)  # a bad --set value first: it is the command line's own error
    check_feature_files(custom_feature=args.custom_feature, feature_T=args.feature_T, feature_A=args.feature_A,
                        feature_V=args.feature_V)
    apply_threads(args.threads)
    ERROR_LOG["file"] = Path(_none_if_empty(args.log_dir) or default_folder("log_dir")) / \
        f"{args.model}-{args.dataset}.log"
    MMSA_run = _mmsa_run()
    kwargs: Dict[str, Any] = dict(
        config_file=_none_if_empty(args.config), config=overrides or None, seeds=args.seeds,
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
    parser = subcommand_parser(
        "tune", "Ray Tune search over the model's config_tune.json grid, scored per epoch on the validation "
                "KeyEval (ASHA stops poor trials early); writes the best config as an MMSA config file.")
    parser.add_argument("-c", "--config", default="", help="tune config file in MMSA's schema (default: ours merged with MMSA's)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="fixed override of one config key in every trial (VALUE read as JSON)")
    parser.add_argument("--custom-feature", default="", help="feature pickle with all modalities")
    parser.add_argument("-s", "--seed", type=_seed, default=1111, action=_Once,
                        help="the one training seed of every trial; give -s once (default 1111)")
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
    add_threads_arg(parser, "torch CPU threads of each trial and of --test-best (default: --cpus-per-trial, "
                            "at least 1)")
    return parser


def tune_main(argv: Sequence[str]) -> int:
    args = tune_parser().parse_args(argv)
    from khar_mmsa.io.names import check_run_names
    check_run_names(args.model, args.dataset)
    overrides = _overrides(args.overrides)
    check_feature_files(custom_feature=args.custom_feature)
    from khar_mmsa.tuning import ray_tune
    apply_threads(args.threads)
    outcome = ray_tune.search(
        args.model, args.dataset, config_file=_none_if_empty(args.config), config=overrides,
        custom_feature=_none_if_empty(args.custom_feature), seed=args.seed, num_samples=args.samples,
        max_epochs=args.max_epochs, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, address=args.address, out_dir=args.out, threads=args.threads)
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
    parser = subcommand_parser(
        "sweep", "MMSA_run of each model x seed as its own run (a Ray task with --executor ray); a manifest in "
                 "--out makes it resumable; the driver writes one results table.", models="+")
    parser.add_argument("-s", "--seeds", type=_seed, nargs="+", action="extend", default=None, metavar="SEED",
                        help="seeds: -s 1111 -s 1112 (MMSA's way) or -s 1111 1112; each distinct "
                             f"(default: {' '.join(map(str, MMSA_DEFAULT_SEEDS))})")
    parser.add_argument("--custom-feature", required=True, help="feature pickle with all modalities (every run reads it)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="MODEL:KEY=VALUE",
                        help="config override for one model (or KEY=VALUE for all); VALUE read as JSON")
    add_threads_arg(parser, "torch CPU threads of each run (and of this driver)")
    parser.add_argument("--out", type=Path, required=True, help="work folder: one folder per run, the manifest, results.csv")
    add_executor_args(parser)
    return parser


def sweep_main(argv: Sequence[str]) -> int:
    parser = sweep_parser()
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds else list(MMSA_DEFAULT_SEEDS)
    check_distinct_seeds(parser, seeds)
    repeated = sorted({m for m in args.models if args.models.count(m) > 1})
    if repeated:  # names are case-insensitive (-m khar KHAR): one model, listed twice
        parser.error(f"model(s) {', '.join(repeated)} given more than once in -m; each model must be distinct")
    from khar_mmsa.io.names import check_run_names
    for model in args.models:
        check_run_names(model, args.dataset)
    per_model: Dict[str, Dict[str, Any]] = {m: {} for m in args.models}
    for pair in args.overrides or []:
        target, sep, rest = pair.partition(":")
        if sep and target.lower() in per_model and "=" in rest:
            per_model[target.lower()].update(_overrides([rest]))
        else:
            for cfg in per_model.values():
                cfg.update(_overrides([pair]))
    check_feature_files(custom_feature=args.custom_feature)
    apply_threads(args.threads)
    from khar_mmsa.experiments.sweep import RunSpec, SweepFailed, executor_options, run_sweep, write_tables
    feature = Path(args.custom_feature).resolve()
    specs = [RunSpec(model=m, dataset=args.dataset, seed=s, feature_path=str(feature), config=per_model[m],
                     out_dir=str(args.out / f"{m}-seed{s}"), threads=args.threads)
             for m in args.models for s in seeds]
    failed: Optional[SweepFailed] = None
    try:
        outcome = run_sweep(specs, executor_options(args), manifest_path=args.out / "sweep-manifest.jsonl",
                            name=f"sweep {args.dataset}")
    except SweepFailed as exc:  # the finished runs still go into the tables
        failed, outcome = exc, exc.outcome
    paths = write_tables(specs, outcome, args.out)
    import pandas as pd
    summary = pd.read_csv(paths["summary"]) if paths["summary"].stat().st_size > 1 else pd.DataFrame()
    print(f"MMSA's scale (x100), mean and population std over seeds:\n{summary.to_string(index=False)}")
    print(f"per-run results: {paths['results']}; summary: {paths['summary']}")
    if failed is not None:
        raise failed
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; a user error (:data:`USER_ERRORS`) ends as one line and exit status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    traceback_wanted = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    mmsa_logger = logging.getLogger("MMSA")  # the parent of every module's logger
    mmsa_logger.setLevel(logging.INFO)
    ERROR_LOG["file"] = None
    handler: Optional[logging.Handler] = None
    try:
        if argv and argv[0] in SUBCOMMANDS:
            if not mmsa_logger.handlers:  # this command's progress lines on stderr, removed when it returns
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
                mmsa_logger.addHandler(handler)
            return {"tune": tune_main, "sweep": sweep_main}[argv[0]](argv[1:])
        return train_main(argv)
    except Exception as exc:  # noqa: BLE001 - user errors become one line; the rest keep their traceback
        cause = user_error(exc)
        if cause is None or traceback_wanted:
            raise
        report(cli_message(cause), PROG)
        return 1
    finally:
        if handler is not None:
            mmsa_logger.removeHandler(handler)
