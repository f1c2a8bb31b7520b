"""Machine images for the tests, built from Debian packages (no image registry is reachable here).

- `engine.py`   a Docker Engine for the tests: the one running, else a `dockerd` started (and ended) here
- `rootfs.py`   root filesystems from Debian packages (`mmdebstrap`), cached by content hash
- `python_slim.py`  a stand-in for the official `python:<X.Y.Z>-slim` image, holding this driver's Python

Made-up images for exercising code, labelled as such (`STANDIN_LABEL`): nothing here ships to users.
"""

STANDIN_LABEL = "skyward.test-standin"
