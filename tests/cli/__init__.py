"""Tests of shardwise.cli: every operator command, its output and exit codes."""
