"""The voxmesh Python client and the ``voxmesh`` command line.

:class:`RecognizerClient` streams audio to a router or an instance and
collects results; :func:`decode_file` turns any audio file into 16 kHz
LINEAR16 with PyAV; :mod:`.cli` is the ``voxmesh`` command.
"""

from voxmesh.client.audio import SAMPLE_RATE, decode_file
from voxmesh.client.client import RecognizerClient, StreamOptions, Transcript

__all__ = ["SAMPLE_RATE", "RecognizerClient", "StreamOptions", "Transcript", "decode_file"]
