"""Tests of xenapinfs_driver.testing."""
