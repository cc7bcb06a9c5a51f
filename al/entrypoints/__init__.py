"""Entry points behind the ``al`` command line and the MLproject: train, pretrain, label,
al_loop, experiment, compare (``hpo`` lives in the :mod:`hpo` package)."""
