"""The platform's database: tables, Alembic migrations and the engine that reaches them."""
