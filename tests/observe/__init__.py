"""Tests of shardwise.observe: metrics, health, status and IAM."""
