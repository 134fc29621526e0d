"""The KHaR configuration, one concern per module:

=======================  ===========================================================================
module                   what it holds
=======================  ===========================================================================
:mod:`.khar_config`      :class:`KHaRConfig` (the typed settings), its sections and derived constants
:mod:`.fields`           how a field is declared (section, help, choices, identity kind)
:mod:`.checks`           type, range, choice and combination checks run when a config is made
:mod:`.size`             size limits and the training-memory estimate (:func:`check_size`)
:mod:`.mmsa_args`        MMSA's ``args`` keys and their mapping onto the fields
:mod:`.booleans`         the one list of true/false words (:func:`parse_bool`, :func:`env_flag`)
:mod:`.hashing`          :func:`fingerprint`, the one hash of settings
:mod:`.reference`        the README's configuration reference table
:mod:`.errors`           :class:`ConfigError`, :class:`ConfigTypeError`
=======================  ===========================================================================

``from khar_mmsa.config import X`` works for every name below.
"""
from khar_mmsa.config.booleans import FALSE_WORDS, TRUE_WORDS, bool_word, env_flag, parse_bool
from khar_mmsa.config.checks import NUMERIC_RANGES, RANGES, check_types, field_types
from khar_mmsa.config.errors import ConfigError, ConfigTypeError
from khar_mmsa.config.fields import (ARCHITECTURE_SECTIONS, ELEMENTWISE_FUSIONS, IDENTITY_KINDS, LABEL_RANGES,
                                     MODALITIES, SECTIONS, config_field)
from khar_mmsa.config.hashing import fingerprint
from khar_mmsa.config.khar_config import (BOOL_KEYS, FUSION_CHOICES, KL_REDUCTIONS, PATH_FIELDS, REBUILD_VALUES,
                                          REFINER_CHOICES, SECTION_TYPES, KHaRConfig, normalize_bools,
                                          section_fields)
from khar_mmsa.config.mmsa_args import MMSA_BOOL_KEYS, MMSA_RUNTIME_KEYS, RUN_PLACE_KEYS, mmsa_kwargs
from khar_mmsa.config.reference import config_reference_markdown
from khar_mmsa.config.size import (MAX_DEPTH, MAX_SEQ_LEN, MAX_WIDTH, PAPER_SIZE_FIELDS, PAPER_SIZE_MIN_TRAIN_CLIPS,
                                   SMALL_DATA_SIZE, check_size, memory_estimate)

__all__ = ["ARCHITECTURE_SECTIONS", "BOOL_KEYS", "ConfigError", "ConfigTypeError", "ELEMENTWISE_FUSIONS",
           "FALSE_WORDS", "FUSION_CHOICES", "IDENTITY_KINDS", "KHaRConfig", "KL_REDUCTIONS", "LABEL_RANGES",
           "MAX_DEPTH", "MAX_SEQ_LEN", "MAX_WIDTH", "MMSA_BOOL_KEYS", "MMSA_RUNTIME_KEYS", "MODALITIES",
           "NUMERIC_RANGES", "PAPER_SIZE_FIELDS", "PAPER_SIZE_MIN_TRAIN_CLIPS", "PATH_FIELDS", "RANGES", "REBUILD_VALUES", "REFINER_CHOICES", "RUN_PLACE_KEYS",
           "SECTIONS", "SECTION_TYPES", "SMALL_DATA_SIZE", "TRUE_WORDS", "bool_word", "check_size", "check_types",
           "config_field", "config_reference_markdown", "env_flag", "field_types", "fingerprint",
           "memory_estimate", "mmsa_kwargs", "normalize_bools", "parse_bool", "section_fields"]
