"""Optuna studies, one job per file (each imports only those above it in this list):

- ``space``: a study's search space: parameter specs -> Optuna suggestions -> config overrides;
- ``spec``: the study file, parsed and validated once per command, with its sampler and pruner;
- ``store``: Optuna storage, the study's attributes, its trials and best trial (all that
  compare and export need);
- ``objective``: one trial = ``train.fit`` with sampled overrides;
- ``parent_run``: the study's MLflow parent run, its reports and Optuna's plots;
- ``sweep``: worker processes, progress and the summary.
"""
