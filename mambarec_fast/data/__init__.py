"""MMRec-format data: loading and validation, graphs, negative sampling, synthetic datasets."""
from .graphs import build_graphs, cached_knn_graph, knn_graph, user_item_graphs
from .mmrec import DataError, MMRecDataset, load_mmrec, write_mmrec
from .sampling import TrainSampler
from .synthetic import PRESETS, SyntheticSpec, load_dataset, make_synthetic

__all__ = [
    "DataError", "MMRecDataset", "PRESETS", "SyntheticSpec", "TrainSampler", "build_graphs", "cached_knn_graph",
    "knn_graph", "load_dataset", "load_mmrec", "make_synthetic", "user_item_graphs", "write_mmrec",
]
