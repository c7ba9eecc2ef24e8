"""Pure decisions (no torch, no Ray): batch geometry, the LR schedule, the batch/LR/adversarial policies, and worker
membership.
"""
