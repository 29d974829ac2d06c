"""``python -m voxmesh.mesh``."""

import sys

from voxmesh.mesh.local import main

sys.exit(main())
