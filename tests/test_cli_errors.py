"""The command line's user errors are classes, named by their defining module and read from
``sys.modules`` (so ``--help`` imports none of them): each entry is a real exception class there,
and only those classes -- not another class of the same name -- end as one line."""
from __future__ import annotations

import importlib

import pytest

from khar_mmsa import cli_errors


@pytest.mark.parametrize("module", sorted(cli_errors.USER_ERRORS))
def test_each_user_error_is_an_exception_class_of_its_module(module):
    imported = importlib.import_module(module)
    for name in cli_errors.USER_ERRORS[module]:
        cls = getattr(imported, name)
        assert isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == module, name
        chained = RuntimeError("MMSA_run failed")
        chained.__cause__ = cls.__new__(cls)
        assert cli_errors.user_error(chained) is chained.__cause__, name


def test_the_settings_errors_are_user_errors():
    for module, names in cli_errors.SETTINGS_ERRORS.items():
        assert set(names) <= set(cli_errors.USER_ERRORS[module])


def test_a_class_that_only_shares_a_name_is_not_a_user_error():
    from khar_mmsa.config import ConfigError
    assert cli_errors.user_error(ConfigError("batch_size=1")) is not None
    assert cli_errors.user_error(RuntimeError("a bug")) is None
    namesake = type("ConfigError", (Exception,), {})
    assert cli_errors.user_error(namesake("batch_size=1")) is None
    assert cli_errors.cli_message(namesake("x='a'")) == "x='a'"  # not respelled either
