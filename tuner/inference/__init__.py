"""Inference tuning: serve a workload's model under an open-loop load and find the config
with the most queries per second under a p99 latency SLO, without losing accuracy.

Pure modules (no torch; importable by the space, the CLI and the service): `knobs` (the
catalogue), `config` (`InferenceConfig`), `refusals` (what cannot run, said before any
trial), `memory` (the memory model), `loadgen` (Poisson arrivals), `batcher` (the dynamic
batcher and its instances), `result` (`InferenceResult`), `objectives` (best under the SLO,
the Pareto front). Modules that import torch, loaded only when a trial runs: `prepare`
(precision, int8, fusion, compile), `placement` (the device: a GPU's copies, streams and
memory), `accuracy` (the guard), `trial` (one trial and its rate
ramp). See docs/inference.md.
"""
