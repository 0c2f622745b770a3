import sys

from subterra_dagster.cli import main

sys.exit(main())
