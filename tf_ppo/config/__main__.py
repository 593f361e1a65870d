"""`python -m tf_ppo.config [--check] [FILE]`: write (or check) the generated configuration reference."""

import sys

from tf_ppo.config.reference import main

sys.exit(main())
