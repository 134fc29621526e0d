"""README stays true: its configuration reference is the one generated from the config's fields."""
from pathlib import Path

from khar_mmsa.config import config_reference_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_readme_configuration_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    assert config_reference_markdown() in readme, (
        "README's configuration reference is stale: regenerate it from khar_mmsa/config.py")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in readme and "python -m pytest" in ci
