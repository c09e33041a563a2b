"""Helpers shared by the tests: service checks, test images and the test registry."""
