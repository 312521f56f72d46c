"""Sweeps: many training runs of one base config in an Optuna study, and the report of their results.

`space` (the search space, pure data), `studies` (storage, sampler, progress), `trials` (one trial: claim, train,
tell), `engine` (the workers), `results` (the trials' rows, their points and statistics), `report` (the tables)
and `figures` (all three from the trials' files: no database, no JAX). Only a trial that trains imports the run
(experiments.runner, in trials.run_trial).
"""
