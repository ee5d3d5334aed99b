"""Tests of shardwise.observe: metrics, health, progress and logging."""
