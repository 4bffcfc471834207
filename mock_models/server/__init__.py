"""The HTTP server around the engine: a FastAPI app, an engine thread, and the launch command."""
