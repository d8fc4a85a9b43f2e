"""REST service: ``create_app()`` builds the FastAPI app; ``l07 serve`` runs it on uvicorn."""

from .app import create_app

__all__ = ["create_app"]
