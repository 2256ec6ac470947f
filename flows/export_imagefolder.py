"""`python -m flows.export_imagefolder`, the documented spelling: the code is
tools/export_imagefolder.py."""

import typer

from tools.export_imagefolder import export_imagefolder

if __name__ == "__main__":
    typer.run(export_imagefolder)
