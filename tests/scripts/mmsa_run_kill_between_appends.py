"""Test-only (tests/test_trust_round5.py): one ``MMSA_run('khar', ...)`` that SIGKILLs itself
between the two results-table appends of its row -- after ``<dataset>.csv`` got the row, before
``<dataset>.tidy.csv`` does.  ``argv[1]``: a JSON object ``{"config": {...}, "kwargs": {...}}`` of
``MMSA_run`` arguments (paths as strings).  Nothing in khar_mmsa knows: ``append_whole`` is wrapped here.
The test runs it with ``runpy`` in a forked child of the test process (MMSA imported once); it also
runs on its own as ``python tests/scripts/mmsa_run_kill_between_appends.py '<spec>'``.
"""
import json
import os
import signal
import sys

import torch

torch.set_num_threads(1)

import khar_mmsa  # noqa: E402,F401  (registers 'khar')
import khar_mmsa.io.appends as appends  # noqa: E402
from MMSA import MMSA_run  # noqa: E402

real_append_whole = appends.append_whole


def append_then_die(path, data, own_line=False):
    if str(path).endswith(".tidy.csv"):  # MMSA's table has the row: the kill falls between the two
        os.kill(os.getpid(), signal.SIGKILL)
    return real_append_whole(path, data, own_line)


appends.append_whole = append_then_die
spec = json.loads(sys.argv[1])
MMSA_run("khar", "mosi", config=spec["config"], **spec["kwargs"])
