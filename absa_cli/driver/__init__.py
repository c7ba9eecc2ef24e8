"""The driver: the epoch loop that acts on decisions, the worker-group contract it defines, the in-process group, and
how a run ends.
"""
