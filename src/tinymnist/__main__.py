import sys

from tinymnist.cli.main import main

sys.exit(main())
