"""One worker process's view (torch, never Ray): the training step, evaluation, the curvature probe, FGSM, the
accelerator path and `absa hessian`'s analysis.
"""
