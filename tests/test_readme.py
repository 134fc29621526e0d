"""README stays true: its configuration reference is the one generated from the config's fields."""
from pathlib import Path

from khar_mmsa.config import config_reference_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_readme_configuration_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    assert config_reference_markdown() in readme, (
        "README's configuration reference is stale: regenerate it with khar_mmsa.config.config_reference_markdown()")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in readme and "python -m pytest" in ci


def _demo_block_table(readme: str) -> dict:
    """{model: {column: cell}} from the demo output README quotes (between its markers)."""
    block = readme.split("<!-- demo-output:start -->", 1)[1].split("<!-- demo-output:end -->", 1)[0]
    lines = [line.split() for line in block.splitlines()]
    header = next(cells for cells in lines if "Model" in cells)
    return {cells[header.index("Model")]: dict(zip(header, cells)) for cells in lines
            if len(cells) == len(header) and cells[0].startswith("run-")}


def test_readme_quotes_the_demo_numbers_the_demo_checks_against():
    """README's demo table shows the values the demo itself expects (DEMO_EXPECTED), in the units
    the demo prints (MMSA's x100)."""
    from khar_mmsa.demo import DEMO_EXPECTED
    table = _demo_block_table((ROOT / "README.md").read_text())
    for model, metrics in DEMO_EXPECTED.items():
        for metric, (want, _) in metrics.items():
            assert float(table[model][metric]) == want, (model, metric, table[model][metric], want)


def test_the_test_command_runs_without_pytest_xdist():
    """pyproject.toml's addopts ask pytest-xdist for workers; without the plugin (here: blocked)
    tests/conftest.py accepts and ignores those options, so ``python -m pytest`` still runs."""
    import os
    import subprocess
    import sys
    import tomllib
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "--numprocesses=" in pyproject["tool"]["pytest"]["ini_options"]["addopts"]
    assert any(r.startswith("pytest-xdist") for r in pyproject["project"]["optional-dependencies"]["test"])
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "tests/test_readme.py::test_ci_runs_the_readme_test_command"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
