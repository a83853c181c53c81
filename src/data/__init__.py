"""Datasets and LightningDataModules (one module + one YAML per dataset)."""
