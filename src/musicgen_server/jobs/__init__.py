"""Durable work: the job store and queue (SQLAlchemy), artifact storage and the worker that
claims jobs and feeds the engines. Imports generation and models, never api."""
