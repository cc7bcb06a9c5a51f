"""``python -m al.cli``: the ``al`` command line (as the MLproject runs it)."""

from al.cli import main

if __name__ == "__main__":
    main()
