"""`python -m services.asr_large`: an ASR instance with the asr_large defaults."""

from __future__ import annotations

import sys

from voxmesh.asr.app import main

DEFAULTS = {"pool": "asr_large", "model": "base", "max_streams": 2}

if __name__ == "__main__":
    sys.exit(main(DEFAULTS))
