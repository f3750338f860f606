"""AWS actions: one small declared unit per behaviour (name, permissions, check,
capture, apply, verify, undo). Knows nothing of Slack or of the store."""
