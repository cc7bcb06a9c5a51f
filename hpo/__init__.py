"""Hyper-parameter optimisation of the surrogate with Optuna, tracked in MLflow.

- :mod:`hpo.space`: the search space (config keys, ranges, and why);
- :mod:`hpo.objective`: one trial = one fit on a fixed labelled set, pruned per epoch;
- :mod:`hpo.study`: storage, workers, and the study's MLflow run;
- :mod:`hpo.config`: the study's settings and the sampler and pruner registries.
"""
