"""Measurement: what the bench, the planner, the demo and the tests measure models with.

A training step and a prediction of any contender (ours or upstream's, same weights), the live
tensor bytes and activation peak of a block, matrix-multiply FLOPs, host stalls, bytes on the
wire per collective, model state per rank, and the memory planner's traced estimates
(:mod:`.planner`). It sits below the tools (``tools.bench``, ``tools.plan``, ``tools.demo``)
and above the models and the runtime, which know nothing of it.
"""
