"""MMRec-format data: loading and validation, graphs, negative sampling, synthetic datasets."""
