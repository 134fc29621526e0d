"""Where and how a sweep's runs execute: :class:`ExecutorOptions` and their command-line flags."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

EXECUTORS = ("local", "ray")
DATA_TRANSFERS = ("path", "object-store")


@dataclass
class ExecutorOptions:
    """Where and how the runs execute (see :mod:`khar_mmsa.experiments.sweep`)."""

    executor: str = "local"
    address: Optional[str] = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    memory_per_run_gb: Optional[float] = None
    data_transfer: str = "path"
    max_in_flight: Optional[int] = None
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r}: choose one of {EXECUTORS}")
        if self.data_transfer not in DATA_TRANSFERS:
            raise ValueError(f"data_transfer={self.data_transfer!r}: choose one of {DATA_TRANSFERS}")
        if self.executor == "local" and self.data_transfer != "path":
            raise ValueError("data_transfer='object-store' needs executor='ray'")
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0:
            raise ValueError(f"cpus_per_run={self.cpus_per_run} must be > 0 and gpus_per_run="
                             f"{self.gpus_per_run} >= 0")


def add_executor_args(parser: Any) -> None:
    """``--executor``, ``--address``, ``--cpus-per-run``, ``--gpus-per-run``, ``--memory-per-run``,
    ``--data-transfer``, ``--max-in-flight``, ``--fresh`` on an argparse parser."""
    group = parser.add_argument_group("executor (see khar_mmsa.experiments.sweep)")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: a plain loop in this process (default); ray: one Ray task per run")
    group.add_argument("--address", default=None,
                       help="Ray cluster: 'auto' (the one started with `ray start` on this machine) or "
                            "host:port; default: a local Ray instance for this sweep")
    group.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run reserves (Ray)")
    group.add_argument("--gpus-per-run", type=float, default=0.0,
                       help="GPUs each run reserves; a fraction (0.5) shares one GPU (Ray)")
    group.add_argument("--memory-per-run", type=float, default=None, metavar="GB",
                       help="memory each run reserves, in GB (Ray's scheduler; not a hard limit)")
    group.add_argument("--data-transfer", choices=DATA_TRANSFERS, default="path",
                       help="path: workers read the feature pickle at its path (shared filesystem); "
                            "object-store: the driver ships its bytes through Ray's object store")
    group.add_argument("--max-in-flight", type=int, default=None,
                       help="runs dispatched at once (Ray; default: what the cluster's CPUs/GPUs fit)")
    group.add_argument("--fresh", action="store_true",
                       help="ignore the runs the sweep manifest records as done (it is kept as "
                            "sweep-manifest.jsonl.<time>) and run everything again")


def executor_options(args: Any) -> ExecutorOptions:
    """:class:`ExecutorOptions` from the arguments :func:`add_executor_args` added."""
    return ExecutorOptions(executor=args.executor, address=args.address, cpus_per_run=args.cpus_per_run,
                           gpus_per_run=args.gpus_per_run, memory_per_run_gb=args.memory_per_run,
                           data_transfer=args.data_transfer, max_in_flight=args.max_in_flight,
                           fresh=bool(getattr(args, "fresh", False)))
