"""Test doubles for the layers below the driver: run for real, on loopback."""
