"""The label convention shared by tasks, models and training: labels are aligned with the inputs (the
prediction at position t is scored against labels[:, t], no shift), and IGNORE_INDEX marks a position
that is not scored (torch's cross-entropy default)."""

IGNORE_INDEX = -100
