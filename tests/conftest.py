"""Test-wide set-up."""

from voxmesh.rpc import aio_compat

aio_compat.install()
