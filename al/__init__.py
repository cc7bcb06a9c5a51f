"""al: active learning of small graph neural networks on QM9, run as MLflow Projects."""

from al.runtime import prepare as _prepare_threads

__version__ = "0.1.0"

# before anything imports PyTorch: OpenMP reads its wait policy once, when it starts
_prepare_threads()
