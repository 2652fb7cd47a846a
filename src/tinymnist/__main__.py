import sys

from tinymnist.cli import entry

sys.exit(entry())
