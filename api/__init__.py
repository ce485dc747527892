"""The tuner service: a FastAPI app over SQL storage shared with Optuna.

Layering: routes -> services -> repositories -> db. Routes parse and answer HTTP,
services own transactions and decisions, repositories only query and flush.
"""
