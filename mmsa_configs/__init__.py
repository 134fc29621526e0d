"""khar-mmsa's entries for MMSA's config JSON (model 'khar', dataset 'simsv2'), shipped as package data."""
