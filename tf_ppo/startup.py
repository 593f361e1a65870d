"""Import TensorFlow without its C++ start-up banner.

TensorFlow 2.21 prints its start-up notes (oneDNN, the CUDA stub, CPU features) from C++ before its log
level is read, twice per import, so `TF_CPP_MIN_LOG_LEVEL` does not hide them and every `tf-ppo --help`
began with about 8 lines of them. `import_tensorflow` catches file descriptor 2 for the import and
writes back every line that is not one of those notes: errors and warnings still show. A user who
sets `TF_CPP_MIN_LOG_LEVEL` (to anything, 0 included) gets TensorFlow's own behaviour.

Example:
    >>> tf = import_tensorflow()
    >>> tf.__name__
    'tensorflow'
"""

import os
import re
import sys
import tempfile

# The informational lines of TensorFlow's import: absl's preamble, I-level notes (I<mmdd> <time> <thread>
# <file>:<line>]) and the second line of the CPU-feature note.
START_UP_NOTE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} [\d:.]+ +\d+ "
                           r"[\w.]+:\d+\]|To enable the following instructions:")


def import_tensorflow():
    """`import tensorflow`, its start-up notes left out of stderr unless TF_CPP_MIN_LOG_LEVEL is set."""
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow
        return tensorflow
    with tempfile.TemporaryFile(mode="w+b") as caught:
        sys.stderr.flush()
        saved_stderr = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            caught.seek(0)
            _write_back(caught.read().decode(errors="replace"))
    return tensorflow


def _write_back(text):
    kept = [line for line in text.splitlines(keepends=True) if not START_UP_NOTE.match(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
