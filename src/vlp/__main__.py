"""``python -m vlp``: see :mod:`vlp.cli`."""

from vlp.cli import main

if __name__ == "__main__":
    main()
