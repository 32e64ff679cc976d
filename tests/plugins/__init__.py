"""Plugins the tests register: each hardware edge extended by one file."""
