"""The files khar-mmsa reads and writes, and how: none of it touches MMSA.

* :mod:`.pickles` (with :mod:`.pickle_machine`, :mod:`.pickle_opcodes`, :mod:`.pickle_globals`,
  :mod:`.pickle_budget`): feature pickles read by the grammar of what MMSA feature pickles contain,
  within a budget of the bytes read;
* :mod:`.files`: content hashes, safe checkpoint reads and atomic writes; :mod:`.appends`: whole
  appends and files opened without following a link;
* :mod:`.state_files`: the state files a run leaves for the next (checkpoint configs, resume and
  adapter files) read back, and damaged ones set aside; :mod:`.identity`: what identifies them;
* :mod:`.locks`: every file lock; :mod:`.names`: model and dataset names that become file names.
"""
