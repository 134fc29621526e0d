"""README and its docs pages stay true: the configuration reference is the one generated from the
config's fields, the demo output quoted is what the demo expects, README's one-minute example is the
demo's data and settings, and CI runs README's test command."""
import ast
import re
from pathlib import Path

from khar_mmsa.config import config_reference_markdown

ROOT = Path(__file__).resolve().parent.parent
#: The page that quotes the demo's output (between its markers).
DEMO_PAGE = ROOT / "docs" / "usage.md"


def test_configuration_reference_is_current():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert config_reference_markdown() in page, (
        "docs/configuration.md's reference is stale: regenerate it with khar_mmsa.config.config_reference_markdown()")


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


def test_docs_quote_the_demo_numbers_the_demo_checks_against():
    """The demo table quoted (docs/usage.md) shows the values the demo itself expects (DEMO_EXPECTED), in the units
    the demo prints (MMSA's x100)."""
    from khar_mmsa.demo import DEMO_EXPECTED
    table = _demo_block_table(DEMO_PAGE.read_text())
    for model, metrics in DEMO_EXPECTED.items():
        for metric, (want, _) in metrics.items():
            assert float(table[model][metric]) == want, (model, metric, table[model][metric], want)


def _readme_example() -> ast.Module:
    """README's one-minute example: its Python block that builds the planted data."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return ast.parse(next(b for b in blocks if "make_planted_dataset" in b))


def _call(tree: ast.Module, name: str) -> ast.Call:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == name)


def test_readme_example_is_the_demos_khar_run():
    """README's one-minute example trains on the demo's data with the demo's KHaR settings, and the
    numbers it quotes are the ones the demo records for that run."""
    from khar_mmsa.demo import DEMO_EXPECTED, DEMO_SEED, DEMO_SEQ_LENS, DEMO_SIZES, KHAR_DEMO_CONFIG
    tree = _readme_example()
    data = {k.arg: ast.literal_eval(k.value) for k in _call(tree, "make_planted_dataset").keywords}
    assert tuple(data["sizes"]) == DEMO_SIZES and tuple(data["seq_lens"]) == DEMO_SEQ_LENS
    run = {k.arg: k.value for k in _call(tree, "MMSA_run").keywords}
    config = ast.literal_eval(run["config"])
    assert config.pop("pretrained") == "all-MiniLM-L6-v2"
    assert config == KHAR_DEMO_CONFIG and ast.literal_eval(run["seeds"]) == [DEMO_SEED]
    quoted = re.search(r"print\(row\['MAE'\], row\['Corr'\]\)\s+# ([\d.]+) ([\d.]+)",
                       (ROOT / "README.md").read_text())
    assert quoted and (float(quoted[1]), float(quoted[2])) == (DEMO_EXPECTED["khar"]["MAE"][0],
                                                               DEMO_EXPECTED["khar"]["Corr"][0])


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
