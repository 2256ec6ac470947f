"""`python -m flows.stack <command>`, the documented spelling: the code is in
flows/runtime/stack.py."""

from flows.runtime.stack import app

if __name__ == "__main__":
    app()
