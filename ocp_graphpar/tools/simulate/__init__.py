"""Relaxations and molecular dynamics with a checkpoint's model over graph-parallel workers:
``ocp-graphpar relax`` and ``ocp-graphpar md``.

Both write an ASE ``.traj`` trajectory a frame at a time, each write atomic (a killed run leaves
the file as it was before the write or after it), frame 0 being the starting structure. Each
frame records its step and, for MD, the random generator's state, so a rerun with the same
``--out`` resumes from the last frame and runs only the steps that remain; NVE and Langevin
runs resumed this way continue as the uninterrupted run would. The loops
(:mod:`~ocp_graphpar.tools.simulate.runs`) take any ASE calculator.
"""
