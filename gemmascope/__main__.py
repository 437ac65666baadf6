"""`python -m gemmascope --config=... --workdir=... --mode=...`: the command line.

The flags and what each mode does are in gemmascope/study/main.py and docs/quickstart.md.
"""

from gemmascope.study import main

if __name__ == "__main__":
    main.run()
