"""One training trial over `world_size` processes (DDP, ZeRO-1, FSDP2).

`run` starts it (`run_distributed_trial`); `launch` starts and kills the rank processes,
`rank_main` is each rank's entry point, `rank_loop` its training loop, `wrap` applies the
sharding stage, `comm` measures communication, `supervise` watches the ranks and
`aggregate` turns the ranks' results into one `TrialResult`.
"""

from tuner.trial.distributed.run import run_distributed_trial

__all__ = ["run_distributed_trial"]
