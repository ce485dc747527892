"""Running trials for real: the only package (with the workload models) that imports torch.

Entry point: `tuner.trial.runner.run_training_trial`. The pieces it is made of are
shared with other trial kinds and tools (profiler, distributed runner):
`device`, `precision`, `schedule`, `train_step`, `checkpointing`, `timing`,
`memory_meter`, `oom`, `guard`, `progress`. Nothing is imported here, so importing a
submodule does not pull in the others.
"""
