"""al: active learning of small graph neural networks on QM9, run as MLflow Projects."""

__version__ = "0.1.0"
