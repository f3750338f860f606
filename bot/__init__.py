"""Cordon's Slack side: Bolt app, listeners, Block Kit, settings, CLI, scheduler."""
