"""The embedded default: a local AWS, a local stand-in for Slack, and the real bot."""
