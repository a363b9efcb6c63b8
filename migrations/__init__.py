"""State-database migrations, shipped as package data (see README.md here)."""
