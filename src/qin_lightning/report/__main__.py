"""`python -m qin_lightning.report`."""

from qin_lightning.report.main import main

if __name__ == "__main__":
    main()
