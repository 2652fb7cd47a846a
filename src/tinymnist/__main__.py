import sys

from tinymnist.cli import main

sys.exit(main())
