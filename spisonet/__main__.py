"""``python -m spisonet``: same as the ``spisonet`` command."""

from spisonet.cli import main

main()
