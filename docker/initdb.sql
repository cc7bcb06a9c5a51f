-- Run once by the postgres image when its volume is new: MLflow's tables live in the
-- database `mlflow` (POSTGRES_DB), Optuna's in `optuna`. They cannot share one database:
-- both record their schema version in a table named alembic_version.
CREATE DATABASE optuna;
