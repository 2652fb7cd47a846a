"""Steps: the built-in journeys and recipes (``builtin``), a user's journey TOML as the same dataclasses
(``journey_file``)."""
