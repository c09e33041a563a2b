"""Test support for CoreBase and its plugins: a local test image, real server processes and their clean-up.

`corebase.testing.pytest_plugin` turns these into pytest fixtures (corebase_image,
corebase_server, corebase_client, corebase_server_factory); pytest loads it through the
`pytest11` entry point once corebase is installed. The modules import pytest, aiodocker and
httpx, so import them from tests only.
"""
