"""Using a trained model: on image files (``inference``), the ASGI app and its page (``serve``), int8 and the
static page (``deploy``), the notebook API (``api``)."""
