"""A plugin adds and never alters: what ``import khar_mmsa`` does to MMSA and the user's files,
whatever the import order, and a wheel (not an editable install) that trains 'khar'."""
from __future__ import annotations

import json
import math
import os
import site
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import khar_mmsa  # noqa: F401
from khar_mmsa.runs import results_files
from conftest import TINY_KHAR_SIZE

REPO = Path(__file__).resolve().parents[1]
TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=1, early_stop=1, pretrain_epochs=1)


def _python(code: str, cwd: Path, python: str = sys.executable, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) if python == sys.executable else "")
    return subprocess.run([python, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_light_modules_do_not_load_mmsa_or_torch(tmp_path: Path) -> None:
    done = _python("""
        import sys
        import khar_mmsa.io.files, khar_mmsa.data.planted, khar_mmsa.data.transcripts, khar_mmsa.cli
        heavy = [m for m in ("MMSA", "torch", "transformers") if m in sys.modules]
        print("HEAVY", heavy)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_mmsa_own_run_after_import_leaves_every_file_as_mmsa_would(tmp_path: Path, tiny_features,
                                                                   mmsa_run_kwargs, fast_mmsa,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """MMSA_run('tfn') after import khar_mmsa: old rows byte-identical, MMSA's layout for the new
    row, another model's checkpoint and a foreign temp folder untouched."""
    from MMSA import MMSA_run
    res = mmsa_run_kwargs["res_save_dir"]
    mmsa_csv = results_files.results_csv_path(res, "mosi")
    mmsa_csv.parent.mkdir(parents=True)
    old = ('Model,Has0_acc_2,Has0_F1_score,Non0_acc_2,Non0_F1_score,Mult_acc_5,Mult_acc_7,MAE,Corr,Loss\n'
           'mult,"(np.float64(50.0), np.float64(0.0))","(50.0, 0.0)","(50.0, 0.0)","(50.0, 0.0)",'
           '"(20.0, 0.0)","(20.0, 0.0)","(90.0, 1.0)","(10.0, 0.0)","(90.0, 1.0)"\n')
    mmsa_csv.write_text(old)
    models = Path(mmsa_run_kwargs["model_save_dir"])
    models.mkdir(parents=True)
    other = models / "mult-mosi.pth"
    other.write_bytes(b"another model's weights")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))  # this test's own temp folder
    (tmp_path / "system-tmp").mkdir()
    foreign = Path(tempfile.mkdtemp(prefix=f"khar-mmsa-{2**22 + 12345}-"))  # named like ours, of a dead pid
    try:
        MMSA_run("tfn", "mosi", config={"early_stop": 1, "text_out": 16, "hidden_dims": [16, 8, 16],
                                        "featurePath": str(tiny_features("mosi"))}, **mmsa_run_kwargs)
        text = mmsa_csv.read_text()
        assert text.startswith(old)
        new = text[len(old):].splitlines()
        assert len(new) == 1 and new[0].startswith('tfn,"(') and "np.float" not in new[0]
        assert other.read_bytes() == b"another model's weights"
        assert foreign.is_dir()
        assert not results_files.tidy_csv_path(res, "mosi").exists()  # ours only for our runner
    finally:
        foreign.rmdir()


def test_mmsa_run_and_mmsa_test_bound_before_import_route_khar(tmp_path: Path, tiny_features, tiny_bert) -> None:
    """In a fresh interpreter, ``from MMSA import MMSA_run, MMSA_test`` *before* ``import khar_mmsa``:
    the functions the user holds train 'khar' with our runner (MMSA's own body makes no log line
    of its own), and ``MMSA_test`` for the checkpoint is our safe one -- a crafted sample's code does
    not run (refused by the restricted unpickler), a benign sample is predicted; ``unregister``
    gives both functions MMSA's bodies back."""
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")))
    done = _python(f"""
        import json, os, pickle
        from MMSA import MMSA_run, MMSA_test
        own_bodies = MMSA_run.__code__, MMSA_test.__code__
        import khar_mmsa

        class RunsCode:
            def __reduce__(self):
                return os.system, ("touch code-ran",)

        row = MMSA_run('khar', 'mosi', config={config!r}, seeds=[1], num_workers=0, verbose_level=0,
                       model_save_dir='m', res_save_dir='r', log_dir='l')
        out = {{"model": row["Model"], "tidy": os.path.isfile("r/normal/mosi.tidy.csv"),
                "mmsa_body": "Program Start" in open("l/khar-mosi.log").read()}}
        with open({str(tiny_features("mosi"))!r}, "rb") as f:
            test_split = pickle.load(f)["test"]
        with open("benign.pkl", "wb") as f:
            pickle.dump({{k: test_split[k][0] for k in ("text_bert", "audio", "vision")}}, f)
        with open("crafted.pkl", "wb") as f:
            pickle.dump({{"text_bert": RunsCode(), "audio": test_split["audio"][0]}}, f)
        try:
            MMSA_test("khar", "m/khar-mosi.pth", "crafted.pkl", gpu_id=-1)
            out["crafted"] = None
        except Exception as exc:
            out["crafted"] = type(exc).__name__ + ": " + str(exc)
        out["code_ran"] = os.path.exists("code-ran")
        out["prediction"] = MMSA_test("khar", "m/khar-mosi.pth", "benign.pkl", gpu_id=-1)
        khar_mmsa.unregister()
        out["bodies_back"] = (MMSA_run.__code__, MMSA_test.__code__) == own_bodies
        print(json.dumps(out))
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["model"] == "khar" and out["tidy"] and not out["mmsa_body"]
    assert not out["code_ran"] and out["crafted"].startswith("UnsafePickleError: "), out["crafted"]
    assert isinstance(out["prediction"], float) and math.isfinite(out["prediction"])
    assert out["bodies_back"]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with khar-mmsa installed from a wheel built from this tree (its
    dependencies come from the interpreter running the tests: its site-packages listed in a
    ``.pth`` file of the new venv -- ``--system-site-packages`` would give the *base* Python's,
    which lacks MMSA when the suite itself runs in a virtual environment, as the README tells users
    to; a ``.pth`` line adds a folder without running the ``.pth`` files in it, so the tree's
    editable install there stays out).  The wheel is built without build
    isolation (the build requirements the interpreter has; ``pip install -e .`` checks that the
    declared ones suffice) and installed by this interpreter's pip into the venv, which has none of
    its own; ``--ignore-installed``: the editable install of the tree, seen through the system
    site-packages, must not count as already installed."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(root / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(purelib, "_test_interpreter_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next((root / "dist").glob("khar_mmsa-*.whl"))
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                                "--no-index", "--ignore-installed", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    return python


def test_wheel_imported_first_registers_when_mmsa_is_imported_and_trains_khar(wheel_venv: Path, tmp_path: Path,
                                                                             tiny_features, tiny_bert) -> None:
    """In a fresh process: ``import khar_mmsa`` (the wheel's copy) loads no MMSA;
    ``importlib.util.find_spec('MMSA')`` (what ``--help`` does to list MMSA's keys) before the first
    real import of MMSA does not use up the registration; ``from MMSA import MMSA_run`` then binds
    the routed function, which trains 'khar'.  (One interpreter for both: each import of MMSA in a
    fresh one costs seconds; a used-up or missing registration shows as REGISTERED / ROUTED False.)"""
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")))
    done = _python(f"""
        import importlib.util, sys, khar_mmsa
        print("FROM", khar_mmsa.__file__)
        print("MMSA LOADED BY IMPORT", "MMSA" in sys.modules)
        print("LOOKED UP", importlib.util.find_spec("MMSA") is not None, "MMSA" in sys.modules)
        from MMSA import MMSA_run
        import MMSA.run
        from khar_mmsa import registration
        from khar_mmsa.registration.entry_points import body_of_MMSA_run
        print("REGISTERED", registration.is_registered())
        print("ROUTED", MMSA_run is MMSA.run.MMSA_run and MMSA_run.__code__ is body_of_MMSA_run.__code__)
        row = MMSA_run('khar', 'mosi', config={config!r}, seeds=[1], gpu_ids=[], num_workers=0, verbose_level=0,
                       model_save_dir='m', res_save_dir='r', log_dir='l')
        print("MAE", row["MAE"])
    """, tmp_path, python=str(wheel_venv))
    report = f"{done.stdout}\n{done.stderr[-3000:]}"  # each check below names what it saw
    assert f"FROM {wheel_venv.parents[1]}" in done.stdout, report  # the wheel's copy, not the source tree
    assert "MMSA LOADED BY IMPORT False" in done.stdout, report
    assert "LOOKED UP True False" in done.stdout, report
    assert "REGISTERED True" in done.stdout, report
    assert "ROUTED True" in done.stdout, report
    assert done.returncode == 0, report
    assert (tmp_path / "r" / "normal" / "mosi.csv").is_file()


def test_every_package_of_the_tree_ships_in_the_wheel() -> None:
    import tomllib
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "khar_mmsa").rglob("__init__.py")}
    assert found | {"khar_mmsa.mmsa_configs"} == listed


def test_register_before_mmsa_is_imported_registers_once() -> None:
    """``khar_mmsa.run`` (the command line's path) registers while MMSA is not imported yet:
    importing MMSA runs the post-import hook, which registers, and the outer call must not register
    again on top (our wrappers wrapped by our wrappers)."""
    script = ("import importlib, sys, khar_mmsa\n"
              "assert 'MMSA' not in sys.modules\n"
              "khar_mmsa.register()\n"
              "import MMSA.run\n"
              "from khar_mmsa.registration import registered_names\n"
              "names = [(id(o), a) for o, a in registered_names()]\n"
              "assert len(names) == len(set(names)), 'a name replaced twice'\n"
              "assert not hasattr(importlib.import_module('MMSA.models.AMIO').AMIO.__init__.__wrapped__,\n"
              "                   '__wrapped__'), 'a wrapper wrapped'\n"
              "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
