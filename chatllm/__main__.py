import sys

from chatllm.cli import main

sys.exit(main())
