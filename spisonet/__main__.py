"""``python -m spisonet``: same as the ``spisonet`` command."""

from spisonet.cli import main

if __name__ == "__main__":
    main()
