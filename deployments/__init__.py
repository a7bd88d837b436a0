"""Registers the deployments declared in prefect.yaml."""
