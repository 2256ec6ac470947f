"""`python -m flows.benchmark`, the documented spelling: the code is tools/benchmark.py."""

from tools.benchmark import main

if __name__ == "__main__":
    main()
