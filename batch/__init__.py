"""Spark jobs that build the Delta Lake: bronze -> silver -> gold."""
