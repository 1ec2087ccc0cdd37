"""Console-script launcher for ``spisonet``, ``spisonet.py`` and ``spisonet-relion``.

The public tool's users call ``spisonet.py``; pip installs that script as a file named
``spisonet.py`` in the same ``bin/`` folder as ``spisonet``. Python puts a script's own
folder first on ``sys.path``, so ``import spisonet`` would find that script instead of
the package. The launcher drops such folders from ``sys.path`` before importing.
"""

from __future__ import annotations

import os
import sys


def _drop_script_folders() -> None:
    """Remove the folders that hold a ``spisonet.py`` script (and no package) from sys.path."""
    sys.path[:] = [
        p
        for p in sys.path
        if not (
            os.path.isfile(os.path.join(p or ".", "spisonet.py"))
            and not os.path.isdir(os.path.join(p or ".", "spisonet"))
        )
    ]


def main() -> None:
    """Run the spisonet command line."""
    _drop_script_folders()
    from spisonet.cli import main as cli_main

    cli_main()


def relion_main() -> None:
    """Run ``spisonet-relion STAR`` (what RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE names)."""
    _drop_script_folders()
    from spisonet.relion import console_main

    sys.exit(console_main())
