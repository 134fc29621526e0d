"""Predicting with a saved model: ``MMSA_test`` for 'khar', and a safe ``MMSA_test`` for every model.

=========================  =========================================================================
module                     what it holds
=========================  =========================================================================
:mod:`.mmsa_test`          ``MMSA_test`` for 'khar'; a safe ``MMSA_test`` for every model
:mod:`.predict`            predictions of a saved KHaR from its checkpoint's config
:mod:`.samples`            the one check of a single sample for ``MMSA_test``
=========================  =========================================================================
"""
