"""An entry for netwatch.runtime.lean's exec test (tests/unit/runtime/test_lean.py): it says
what image it runs in. Imports nothing heavy, so that pydantic would show only if the image
still held the CLI's modules."""

import os
import sys


def describe_image(answer: int) -> int:
    print(f"pid={os.getpid()} argv={' '.join(sys.argv[1:])} "
          f"pydantic={'pydantic' in sys.modules}", flush=True)
    return answer
