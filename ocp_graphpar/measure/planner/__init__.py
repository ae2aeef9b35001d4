"""The memory planner's model: per-GPU memory of a training step or a prediction against the GP
size and the memory settings, from formulas traced on a small probe of the model.

:mod:`.trace` traces the probe, :mod:`.estimate` plans training (model state and activations
per setting), :mod:`.inference` plans a prediction, and :mod:`.text` renders either plan as
``ocp-graphpar plan`` prints it. The command line is ``tools.plan``; the bench sets these
estimates beside its measured peaks.
"""
