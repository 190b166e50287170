"""Exporters of trained spikelfp networks to NIR and HDF5 (to come)."""
