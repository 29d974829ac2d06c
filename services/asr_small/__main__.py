"""`python -m services.asr_small`: an ASR instance with the asr_small defaults."""

from __future__ import annotations

import sys

from voxmesh.asr.app import main

DEFAULTS = {"pool": "asr_small", "model": "tiny.en"}

if __name__ == "__main__":
    sys.exit(main(DEFAULTS))
