"""The command line: one module per group of commands (``main`` parses and dispatches; ``common``, ``use``,
``search``, ``journey``): parse, call the library, print, exit."""
