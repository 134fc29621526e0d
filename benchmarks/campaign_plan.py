"""The decision campaign's plan: its protocol, its tables' rows, what a run is, and the decision
rules that open each table's gate.  No training and no files written here: ``campaign.py`` runs
the queue, ``campaign_report.py`` renders the tables, ``campaign_stats.py`` reads each comparison.

The protocol (fixed before any run of it; written in benchmarks/README.md, "The decision campaign")
---------------------------------------------------------------------------------------------------
* Every KHaR and floor run trains a **fixed budget** of :data:`BUDGET_EPOCHS` epochs (no early
  stop) and is scored at its **best validation epoch** (validation L1, MMSA's KeyEval).  The
  learning rate warms up linearly over the first :data:`WARMUP_RATIO` of the budget's steps and
  decays linearly to 0 at its end, so every run peaks at epoch ~2 and then has ten epochs of
  decay: none stops near its peak (the quick protocol stopped runs at the peak).
* Learning rates: the first table (``lr``) trains the floor and full KHaR at Table 5's rate (3e-5
  everywhere) and at the quick rate (1e-3 for KHaR's new layers and the floor's head, 5e-5 for the
  text encoder), 5 seeds each.  **Rule**: each model family takes the rate with the lower mean
  validation MAE; every later row of that family uses it.
* MMSA's own TFN, MulT and Self-MM keep their trainers and schedules (they have no epoch cap);
  they stop after :data:`BASELINE_PATIENCE` epochs without a better validation loss (MMSA's default
  ``early_stop``; the paper states no early stopping), and are scored at their best validation
  epoch too.  MulT and Self-MM step their optimizer every batch (``update_epochs=1``, compare.py's
  quick setting; MMSA's defaults are 8 and 4).
* Seeds 1111-1115 everywhere; quality is read on **validation**; the test split is reported only in
  the ``final`` table (and in ``table3``, on planted data where nothing is chosen), though every
  record stores its run's test metrics.
* The open choices (``choices``): a switch replaces the default only when its mean validation
  MAE is lower than the default's by more than the larger of the two stds.  Switches of one field
  (the temperatures) compete among themselves; the winners of different fields are combined for
  the final comparison.
* Data: the real CMU-MOSI transcripts (``../shared/data/mosi/label.csv``, whole folds
  1281/229/685), text only, all-MiniLM-L6-v2, 32 tokens (the ``text-len-50`` rows: 50); Table 3
  on planted MOSI-format data (:mod:`khar_mmsa.data.planted`).

Records, the queue and the command line: ``campaign.py``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import common

logger = logging.getLogger("MMSA")

# ---- the protocol ---------------------------------------------------------------------------------
#: The library the campaign's runs use (:func:`khar_mmsa.io.identity.code_version`): ``run`` refuses any
#: other, so every record of the campaign comes from the same code.  benchmarks/README.md names the
#: commit to check out for it.
CAMPAIGN_CODE_VERSION = "0.1.0+56295ca4b86edfa8"  # commit 103168e
BUDGET_EPOCHS = 12           # every KHaR / floor run trains exactly this many epochs ...
WARMUP_RATIO = 0.1           # ... warming up over this fraction of its steps (Appendix B's linear warm-up)
BASELINE_PATIENCE = 8        # MMSA's TFN / MulT / Self-MM: MMSA's default early_stop (the paper states none)
#: TFN's batch size on the transcripts.  MMSA's own (32) leaves a last training batch of one clip (1281 =
#: 40 x 32 + 1; MMSA's loader keeps it), which the BatchNorm of TFN's audio/vision subnets refuses in
#: training.  33, one more than MMSA's, leaves a last batch of 27 clips (1281 = 38 x 33 + 27).
TFN_BATCH_SIZE = 33
SEEDS = (1111, 1112, 1113, 1114, 1115)
TEXT_LEN = 32                # tokens of the transcripts (quick); the text-len-50 rows use LONG_TEXT_LEN
LONG_TEXT_LEN = 50           # MMSA's MOSI text length
ENCODER = "all-MiniLM-L6-v2"  # by name: the installed encoder (a run's identity holds no path)
PROTOCOL = {"epochs": BUDGET_EPOCHS, "early_stop": BUDGET_EPOCHS, "warmup_ratio": WARMUP_RATIO}
#: KHaR's size and data settings of every transcripts row (compare.py's quick size), before its rate.
KHAR_BASE = {"batch_size": 16, "pretrain_epochs": 1, "modal_dim": 64, "encoder_layers": 2, "pretrained": ENCODER,
             **PROTOCOL}
FLOOR_BASE = {"batch_size": 16, "encoder": ENCODER, **PROTOCOL}
#: The two rates the lr table compares, per model family (Table 5: 3e-5 for everything).
RATES: Dict[str, Dict[str, Dict[str, float]]] = {
    "quick": {"khar": {"learning_rate": 1e-3, "learning_rate_bert": 5e-5},
              "floor": {"learning_rate": 5e-5, "head_learning_rate": 1e-3}},
    "table5": {"khar": {"learning_rate": 3e-5, "learning_rate_bert": 3e-5},
               "floor": {"learning_rate": 3e-5, "head_learning_rate": 3e-5}},
}
BASELINES = ("tfn", "mult", "self_mm")
#: Planted MOSI-format data of Table 3: compare.py / ablations.py's quick sizes, with the text encoder
#: frozen (fine-tuning MiniLM is most of a CPU step; the rows differ in their Table 3 switch only).
PLANTED_SIZES, PLANTED_SEQ_LENS = (128, 64, 128), (20, 32, 32)
PLANTED_BASE = {**KHAR_BASE, "finetune_bert": False}

# Smoke: a tiny BERT and a few clips, for tests.
SMOKE_SEEDS = (1111, 1112)
SMOKE_EPOCHS = 2
SMOKE_SIZES = (16, 8, 8)

TABLES = ("lr", "walk", "choices", "table3", "final")
KHAR_RUNNER = "benchmarks.campaign:run_khar"
FLOOR_RUNNER = "benchmarks.campaign:run_floor"
MMSA_RUNNER = "benchmarks.campaign:run_mmsa"
RECORDS_DIR = common.BENCH_DIR / "records" / "campaign"


# ---- rows -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One row of a table: ``family`` 'khar' | 'floor' | an MMSA model; ``overrides`` on top of the
    family's base settings and rate; ``rate`` None = the rate the lr table chose."""

    key: str
    title: str
    family: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    rate: Optional[str] = None
    text_len: int = TEXT_LEN
    data: str = "transcripts"
    group: str = ""


_NO_CL = {"contrastive_weight": 0.0}
LR_ROWS = [Row(family, f"{title}, {rate} rate", family, rate=rate)
           for family, title in (("floor", "Text-only floor"), ("khar", "KHaR")) for rate in ("quick", "table5")]
WALK_ROWS = [
    Row("floor", "Text-only floor (encoder + linear head)", "floor"),
    Row("text-path", "KHaR's text path, linear head", "khar",
        {"harvesting": False, "pretrain_adapters": False, "refiner": "none", "projection": "none",
         "fusion": "linear", **_NO_CL}),
    Row("harvesting", "+ adapters and harvesting", "khar",
        {"refiner": "none", "projection": "none", "fusion": "linear", **_NO_CL}),
    Row("mlp", "+ MLP in the refiner slot", "khar", {"refiner": "mlp", "projection": "none", "fusion": "linear",
                                                     **_NO_CL}),
    Row("moe", "+ MoE (instead of the MLP)", "khar", {"projection": "none", "fusion": "linear", **_NO_CL}),
    Row("projection", "+ projection and ReLU", "khar", {"fusion": "linear", **_NO_CL}),
    Row("mib", "+ MIB fusion", "khar", dict(_NO_CL)),
    Row("khar", "+ contrastive loss (full KHaR)", "khar"),
]
CHOICE_ROWS = [
    Row("khar", "KHaR, the defaults", "khar"),
    Row("no-gate-noise", "no gate noise (eq. 4 as written)", "khar", {"moe_noisy_gating": False}, group="gate noise"),
    Row("last-hidden", "X_m = [A_m; H_m], H_m the last harvested state", "khar", {"harvested_state": "last_hidden"},
        group="H_m"),
    Row("before-relu", "contrastive loss before the ReLU", "khar", {"contrastive_on": "before_relu"},
        group="contrastive on"),
    Row("tau-0.07", "tau = 0.07", "khar", {"contrastive_temperature": 0.07}, group="tau"),
    Row("tau-0.2", "tau = 0.2", "khar", {"contrastive_temperature": 0.2}, group="tau"),
    Row("text-len-50", f"transcripts cut at {LONG_TEXT_LEN} tokens", "khar", text_len=LONG_TEXT_LEN, group="text length"),
    Row("freeze-bert", "text encoder frozen for the first 2 epochs", "khar", {"freeze_bert_epochs": 2},
        group="frozen encoder"),
    Row("floor", "Text-only floor", "floor"),
    Row("floor-text-len-50", f"Text-only floor, {LONG_TEXT_LEN} tokens", "floor", text_len=LONG_TEXT_LEN,
        group="floor text length"),
]
FINAL_ROWS = [Row("floor", "Text-only floor", "floor"), Row("khar", "KHaR (chosen defaults)", "khar")] + \
    [Row(m, common_title, m) for m, common_title in (("tfn", "TFN (MMSA)"), ("mult", "MulT (MMSA)"),
                                                    ("self_mm", "Self-MM (MMSA)"))]


def table3_rows() -> List[Row]:
    from .ablations import VARIANTS
    return [Row("t3-" + title.split(" ")[0].replace("/", "").replace("+", "").lower(), title, "khar", dict(switch),
                data="planted", group=group) for group, title, switch in VARIANTS]


# ---- what a record is ----------------------------------------------------------------------------
#: The keys a record must hold, and their types (what ``write_record`` writes and the tables read).
RECORD_KEYS = {"run_id": str, "identity": dict, "variant": str, "model": str, "seed": int, "config": dict,
               "finished": str, "outcome": dict}
IDENTITY_KEYS = {"model": str, "variant": str, "seed": int, "runner": str, "code": str, "data": dict}


def record_problem(rec: Any, stem: str) -> Optional[str]:
    """Why ``rec`` (the JSON of ``<stem>.json``) is not a campaign record, or None when it is one: a
    dict with :data:`RECORD_KEYS`, an identity with :data:`IDENTITY_KEYS`, a run id equal to the file's
    name and an outcome whose ``result`` holds test ``metrics``."""
    def missing(obj: Any, keys: Mapping[str, type], where: str) -> Optional[str]:
        if not isinstance(obj, dict):
            return f"{where} is not an object"
        for key, kind in keys.items():
            if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
                return f"{where} has no {kind.__name__} '{key}'"
        return None
    why = missing(rec, RECORD_KEYS, "the record") or missing(rec["identity"], IDENTITY_KEYS, "its identity")
    if why:
        return why
    if rec["run_id"] != stem:
        return f"its run_id {rec['run_id']!r} is not the file's name"
    result = rec["outcome"].get("result")
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        return "its outcome has no result with metrics"
    return None


# ---- what a run is --------------------------------------------------------------------------------
@dataclass
class Campaign:
    """Where the campaign works and what it has recorded."""

    work: Path
    records: Path
    smoke: bool = False
    encoder: Optional[Path] = None   # smoke: a tiny BERT folder; else the installed all-MiniLM-L6-v2
    labels: Path = common.MOSI_LABEL_CSV  # the CMU-MOSI label.csv (read at run time, never committed)
    _data: Dict[Tuple[str, int], Path] = field(default_factory=dict)

    @property
    def seeds(self) -> Tuple[int, ...]:
        return SMOKE_SEEDS if self.smoke else SEEDS

    def encoder_setting(self) -> str:
        return str(self.encoder) if self.smoke else ENCODER

    def load_records(self) -> Dict[str, Dict[str, Any]]:
        """{run_id: record} of every finished run (damaged files left out: see :meth:`scan_records`)."""
        return self.scan_records()[0]

    def scan_records(self) -> Tuple[Dict[str, Dict[str, Any]], Dict[Path, str]]:
        """({run_id: record} of every well-formed record, {path: why} of every damaged one).  A damaged
        record counts as no record: ``run`` runs it again (and overwrites the file), ``status`` lists it."""
        out, damaged = {}, {}
        for path in sorted(self.records.glob("*.json")) if self.records.is_dir() else []:
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                damaged[path] = f"not JSON ({type(exc).__name__}: {exc})"
                continue
            why = record_problem(rec, path.stem)
            if why:
                damaged[path] = why
            else:
                out[rec["run_id"]] = rec
        for path, why in damaged.items():
            logger.warning(f"{path}: damaged campaign record ({why}): counted as not run, 'run' makes it again")
        return out, damaged

    # -- data ---------------------------------------------------------------------------------------
    def data_path(self, row: Row) -> Path:
        key = (row.data, row.text_len)
        if key not in self._data:
            self._data[key] = self._build(row)
        return self._data[key]

    def _build(self, row: Row) -> Path:
        folder = self.work / "data"
        folder.mkdir(parents=True, exist_ok=True)
        if row.data == "planted":
            sizes = SMOKE_SIZES if self.smoke else PLANTED_SIZES
            path, _ = common.make_planted(folder, "mosi", sizes, None if self.smoke else PLANTED_SEQ_LENS,
                                          self.encoder_setting())
            return path
        from khar_mmsa.model.text_encoders import local_folder
        encoder = local_folder(self.encoder_setting())
        path, _ = common.make_transcripts(folder, encoder, self.labels, None, text_len=row.text_len)
        if self.smoke:
            from .walk import _first_clips
            path = _first_clips(path, SMOKE_SIZES)
        return path

    # -- settings -----------------------------------------------------------------------------------
    def config(self, row: Row, rate: str, chosen: Mapping[str, Any] = ()) -> Dict[str, Any]:
        """The ``MMSA_run(config=...)`` overrides of a row at ``rate`` (plus ``chosen`` switches)."""
        if row.family == "khar":
            base = dict(PLANTED_BASE if row.data == "planted" else KHAR_BASE, pretrained=self.encoder_setting())
            cfg = {**base, **RATES[rate]["khar"], **dict(chosen), **row.overrides}
        elif row.family == "floor":
            cfg = {**FLOOR_BASE, "encoder": self.encoder_setting(), **RATES[rate]["floor"], **row.overrides}
        else:
            from .compare import BASELINE_QUICK, BASELINE_SMOKE
            cfg = dict((BASELINE_SMOKE if self.smoke else BASELINE_QUICK)[row.family])
            cfg["early_stop"] = SMOKE_EPOCHS if self.smoke else BASELINE_PATIENCE
            if row.family == "tfn" and not self.smoke:
                cfg["batch_size"] = TFN_BATCH_SIZE
            if row.family == "self_mm":
                cfg.update({"pretrained": self.encoder_setting(), "text_out": self._hidden_size()})
        if self.smoke and row.family in ("khar", "floor"):
            cfg.update(epochs=SMOKE_EPOCHS, early_stop=SMOKE_EPOCHS)
            if row.family == "khar":
                from .compare import KHAR_SMOKE
                cfg.update({k: v for k, v in KHAR_SMOKE.items() if k not in ("epochs", "early_stop")})
        return cfg

    def _hidden_size(self) -> int:
        from khar_mmsa.model.text_encoders import local_folder
        return common.encoder_hidden_size(local_folder(self.encoder_setting()))

    def spec(self, slot: "Slot"):
        """The sweep run of a slot (its data built on first use)."""
        row, seed = slot.row, slot.seed
        cfg = self.config(row, slot.rate, slot.chosen)
        data = self.data_path(row)
        if row.family == "khar" and cfg.get("harvesting", True) and cfg.get("pretrain_adapters", True):
            # one adapter file per seed and data; harvested_state changes its key, so its own file
            own = "-" + row.key if "harvested_state" in row.overrides else ""
            cfg["pretrained_adapters_path"] = str(self.work / "adapters" / f"{data.stem}-seed{seed}{own}.pt")
        return common.mmsa_spec(slot.model, "mosi", data, seed, self.work / "runs" / slot.variant / f"seed{seed}", cfg,
                                variant=slot.variant, label=f"{slot.variant} seed {seed}", threads=1,
                                runner=slot.runner)

    # -- records ------------------------------------------------------------------------------------
    def finder(self, records: Mapping[str, Dict[str, Any]], exact: bool) -> "Finder":
        """How a slot's record is found: ``exact`` by run id (the data's SHA-256 and the library's code
        version included: what ``run`` reuses), else by settings among the campaign's code version's
        records (what ``render`` and ``status`` read, without building any data)."""
        if exact:
            return lambda slot: records.get(self.spec(slot).run_id)
        from khar_mmsa.config import PATH_FIELDS
        index: Dict[Tuple[str, str, int, str], List[Dict[str, Any]]] = {}
        for rec in records.values():
            ident = rec["identity"]
            if self.smoke or ident["code"] == CAMPAIGN_CODE_VERSION:
                index.setdefault((ident["model"], ident["variant"], int(ident["seed"]), ident["runner"]), []).append(rec)

        def find(slot: "Slot") -> Optional[Dict[str, Any]]:
            config = {k: v for k, v in self.config(slot.row, slot.rate, slot.chosen).items() if k not in PATH_FIELDS}
            config = json.loads(json.dumps(config))  # as the record holds it (tuples as lists)
            found = [r for r in index.get((slot.model, slot.variant, slot.seed, slot.runner), [])
                     if r["config"] == config]
            return max(found, key=lambda r: r["finished"]) if found else None
        return find


@dataclass(frozen=True)
class Slot:
    """One run of a table: a row at a rate (with the chosen switches) and a seed.  Its variant names
    the settings, so that rows of several tables with the same settings are the same run."""

    row: Row
    seed: int
    rate: str
    chosen: Tuple[Tuple[str, Any], ...] = ()
    variant_name: Optional[str] = None

    @property
    def variant(self) -> str:
        if self.variant_name:
            return self.variant_name
        return f"{self.row.key}@{self.rate}" if self.row.family in ("khar", "floor") else self.row.key

    @property
    def model(self) -> str:
        return {"khar": "khar", "floor": "text_floor"}.get(self.row.family, self.row.family)

    @property
    def runner(self) -> str:
        return {"khar": KHAR_RUNNER, "floor": FLOOR_RUNNER}.get(self.row.family, MMSA_RUNNER)


Finder = Any  # Callable[[Slot], Optional[record]]


# ---- decisions (rules fixed before any run; see the module docstring) --------------------------------
def metric_values(find: Finder, slots: Sequence[Slot], split: str = "valid", key: str = "MAE") -> Optional[np.ndarray]:
    """``key`` of ``split`` ('valid': the selected epoch's; 'test': ``metrics``) of every slot when every
    one is recorded, else None."""
    values = []
    for slot in slots:
        rec = find(slot)
        if rec is None:
            return None
        result = rec["outcome"]["result"]
        values.append(result["valid" if split == "valid" else "metrics"][key])
    return np.array(values, dtype=float) if values else None


def chosen_rates(camp: Campaign, find: Finder) -> Optional[Dict[str, str]]:
    """{'floor': rate, 'khar': rate} by the lr rule, or None while the lr table is incomplete."""
    chosen = {}
    for family in ("floor", "khar"):
        means = {}
        for rate in RATES:
            row = next(r for r in LR_ROWS if r.family == family and r.rate == rate)
            maes = metric_values(find, [Slot(row, s, rate) for s in camp.seeds])
            if maes is None:
                return None
            means[rate] = float(maes.mean())
        chosen[family] = min(means, key=lambda r: (means[r], r != "quick"))
    return chosen


def spread_sign(maes: np.ndarray, reference: np.ndarray) -> int:
    """The campaign's yardstick: -1 when the mean of ``maes`` is lower than the reference's by more than
    the larger population std of the two, +1 when higher by more than that, else 0."""
    gap, spread = float(maes.mean() - reference.mean()), max(float(maes.std()), float(reference.std()))
    return -1 if gap < -spread else (1 if gap > spread else 0)


def beats(maes: np.ndarray, reference: np.ndarray) -> bool:
    """The choices rule: a lower mean validation MAE by more than the larger population std."""
    return spread_sign(maes, reference) < 0


def chosen_switches(camp: Campaign, find: Finder, rates: Mapping[str, str]) -> Optional[Dict[str, Dict[str, Any]]]:
    """{'khar': {field: value, ['text_len': n]}, 'floor': {['text_len': n]}} by the choices rule, or
    None while the choices table is incomplete."""
    maes = {}
    for row in CHOICE_ROWS:
        maes[row.key] = metric_values(find, [Slot(row, s, rates[row.family]) for s in camp.seeds])
        if maes[row.key] is None:
            return None
    out: Dict[str, Dict[str, Any]] = {"khar": {}, "floor": {}}
    groups: Dict[str, List[Row]] = {}
    for row in CHOICE_ROWS:
        if row.group:
            groups.setdefault(row.group, []).append(row)
    for rows in groups.values():
        reference = maes["floor" if rows[0].family == "floor" else "khar"]
        winners = [r for r in rows if beats(maes[r.key], reference)]
        if winners:
            best = min(winners, key=lambda r: maes[r.key].mean())
            out[best.family].update(best.overrides)
            if best.text_len != TEXT_LEN:
                out[best.family]["text_len"] = best.text_len
    return out


# ---- the tables' runs -----------------------------------------------------------------------------
def table_slots(camp: Campaign, table: str, find: Finder) -> Optional[List[Slot]]:
    """Every run of ``table``, seed-major; None while the table's gate is closed."""
    if table == "lr":
        return [Slot(row, s, row.rate) for s in camp.seeds for row in LR_ROWS]
    rates = chosen_rates(camp, find)
    if rates is None:
        return None
    if table in ("walk", "choices", "table3"):
        rows = {"walk": WALK_ROWS, "choices": CHOICE_ROWS, "table3": table3_rows()}[table]
        return [Slot(row, s, rates[row.family]) for s in camp.seeds for row in rows]
    switches = chosen_switches(camp, find, rates)
    if switches is None:
        return None
    out = []
    khar_len = switches["khar"].get("text_len", TEXT_LEN)  # MMSA's models read KHaR's transcripts
    for s in camp.seeds:
        for row in FINAL_ROWS:
            if row.family in ("khar", "floor"):
                chosen = dict(switches[row.family])
                text_len = chosen.pop("text_len", TEXT_LEN)
                tag = "+".join(f"{k}={v}" for k, v in sorted(chosen.items())) + (
                    f"+text_len={text_len}" if text_len != TEXT_LEN else "")
                # without switches the variant is the walk's row: the same runs
                variant = f"{row.key}@{rates[row.family]}" + (f"+{tag}" if tag else "")
                out.append(Slot(dataclasses.replace(row, text_len=text_len), s, rates[row.family],
                                tuple(sorted(chosen.items())), variant))
            else:
                out.append(Slot(dataclasses.replace(row, text_len=khar_len), s, "quick"))
    return out
